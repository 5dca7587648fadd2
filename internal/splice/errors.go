package splice

import "errors"

var (
	// ErrCut ends a session that Session.Cut ended. A cut that found no
	// boundary within Hooks.CutGrace matches ErrAborted as well.
	ErrCut = errors.New("splice: session cut")
	// ErrAborted ends a session that Session.Abort ended.
	ErrAborted = errors.New("splice: session aborted")
	// ErrPanicked ends a session whose code panicked.
	ErrPanicked = errors.New("splice: session ended by a recovered panic")
	// ErrStopped ends a session that was live when Engine.Stop was called,
	// and is returned by Add and Close after it. It matches ErrAborted.
	ErrStopped = stoppedError{}
)

// errCutAborted ends a cut that found no boundary in time.
var errCutAborted = cutAbortedError{}

type stoppedError struct{}

func (stoppedError) Error() string        { return "splice: engine stopped" }
func (stoppedError) Is(target error) bool { return target == ErrAborted }

type cutAbortedError struct{}

func (cutAbortedError) Error() string {
	return "splice: session cut: no boundary within the cut grace, aborted"
}
func (cutAbortedError) Is(target error) bool { return target == ErrCut || target == ErrAborted }
