package atomicfile

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/gofrs/flock"
)

// DefaultLockTimeout is how long [Lock] waits for a lock held by another
// process when its context has no deadline.
const DefaultLockTimeout = 30 * time.Second

// retryDelay is how often Lock tries again. Changes under the lock take
// milliseconds, so a short delay keeps 50 queued commands quick.
const retryDelay = 5 * time.Millisecond

// Lock takes an exclusive lock on the file at path, creating it (mode 0600)
// if needed, and returns the function that releases it. It waits while
// another process, or another Lock call in this process, holds the lock,
// until ctx ends or, if ctx has no deadline, [DefaultLockTimeout] passes.
//
// The lock is advisory: it only excludes other callers of Lock on the same
// path. The lock file is left in place when released, because removing it
// would let a waiting process lock a file that no longer has a name.
func Lock(ctx context.Context, path string) (unlock func() error, err error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultLockTimeout)
		defer cancel()
	}
	fl := flock.New(path, flock.SetPermissions(0o600))
	ok, err := fl.TryLockContext(ctx, retryDelay)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("locking %s: another spacegate command has held the lock for too long: %w", path, err)
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	if !ok {
		return nil, fmt.Errorf("locking %s: lock not acquired", path)
	}
	return fl.Unlock, nil
}
