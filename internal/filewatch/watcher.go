package filewatch

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Defaults for the zero Options.
const (
	DefaultDebounce = 100 * time.Millisecond
	DefaultPoll     = 30 * time.Second

	// maxDelay bounds how long a steady stream of events can postpone the
	// signal, so that a file rewritten every few milliseconds still
	// reloads.
	maxDelay = time.Second

	errorBuffer = 16
)

// Options configures a Watcher. The zero value uses the defaults.
type Options struct {
	// Debounce is how long the Watcher waits after the last event of a
	// burst before it compares fingerprints, so that the many events of
	// one update (create, write, rename, remove) produce one signal. A
	// steady stream of events delays the comparison by at most 1s, or by
	// Debounce if that is longer. If zero, DefaultDebounce is used; if
	// negative, fingerprints are compared after every event.
	Debounce time.Duration

	// Poll is the interval of the periodic check that catches changes the
	// file system did not report (network mounts, some container
	// overlays). If zero, DefaultPoll is used; if negative, there is no
	// periodic check.
	Poll time.Duration
}

// Watcher reports changes to a set of files. It is safe for concurrent use.
// The zero Watcher is not usable; call New.
//
// Create the Watcher, or call SetPaths, before reading the files it watches:
// a change made after the Watcher has fingerprinted a file is reported, one
// made before is not.
type Watcher struct {
	debounce time.Duration
	maxDelay time.Duration
	poll     time.Duration

	fsw      *fsnotify.Watcher // nil when polling only
	changes  chan struct{}
	errs     chan error
	done     chan struct{}
	wg       sync.WaitGroup
	once     sync.Once
	closeErr error

	mu       sync.Mutex
	closed   bool
	paths    []string
	prints   map[string]fingerprint
	watched  map[string]bool   // directories added to fsw
	reported map[string]string // directory -> last add error sent to errs
}

// New starts watching paths, which may name files that do not exist yet.
// Relative paths are made absolute against the current directory. An empty
// list is allowed; see SetPaths.
//
// New fails if a path is empty, or if the operating system refuses a
// notification watcher and opts.Poll disables the periodic check; with the
// periodic check enabled, that failure is sent to Errors and the Watcher
// polls.
func New(paths []string, opts Options) (*Watcher, error) {
	return newWatcher(paths, opts, true)
}

// newWatcher is New with a switch to turn file system notifications off, so
// that tests can show the periodic check working alone.
func newWatcher(paths []string, opts Options, notify bool) (*Watcher, error) {
	abs, err := cleanPaths(paths)
	if err != nil {
		return nil, err
	}
	w := &Watcher{
		debounce: opts.Debounce,
		poll:     opts.Poll,
		changes:  make(chan struct{}, 1),
		errs:     make(chan error, errorBuffer),
		done:     make(chan struct{}),
		prints:   make(map[string]fingerprint),
		watched:  make(map[string]bool),
		reported: make(map[string]string),
	}
	switch {
	case w.debounce == 0:
		w.debounce = DefaultDebounce
	case w.debounce < 0:
		w.debounce = 0
	}
	w.maxDelay = max(maxDelay, w.debounce)
	switch {
	case w.poll == 0:
		w.poll = DefaultPoll
	case w.poll < 0:
		w.poll = 0
	}
	if notify {
		fsw, err := fsnotify.NewWatcher()
		switch {
		case err == nil:
			w.fsw = fsw
		case w.poll == 0:
			return nil, fmt.Errorf("starting file system notifications without a periodic check to fall back on: %w", err)
		default:
			w.report(fmt.Errorf("starting file system notifications, polling every %v instead: %w", w.poll, err))
		}
	}

	w.mu.Lock()
	w.paths = abs
	w.arm()
	for _, p := range abs {
		w.prints[p] = fingerprintOf(p)
	}
	w.mu.Unlock()

	kick := make(chan struct{}, 1)
	if w.fsw != nil {
		w.wg.Add(1)
		go w.drain(kick)
	}
	w.wg.Add(1)
	go w.loop(kick)
	return w, nil
}

// Changes returns the channel on which the Watcher sends one value per
// debounced burst of changes. The channel has a buffer of one and a send
// never blocks: signals that arrive while one is pending merge into it. The
// channel is not closed by Close.
func (w *Watcher) Changes() <-chan struct{} { return w.changes }

// Errors returns the channel on which the Watcher reports problems worth
// logging: errors from the notification system (including a queue overflow,
// after which it re-checks every file) and directories it could not watch.
// None of them stops the Watcher. The channel is buffered and errors are
// dropped while it is full. It is not closed by Close.
func (w *Watcher) Errors() <-chan error { return w.errs }

// SetPaths replaces the set of watched paths, for example after a reload
// names new files. Paths that were already watched keep their last
// fingerprint, so a change still pending for them is reported; new paths
// are fingerprinted without a signal. SetPaths returns ErrClosed after
// Close.
func (w *Watcher) SetPaths(paths []string) error {
	abs, err := cleanPaths(paths)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrClosed
	}
	w.paths = abs
	w.arm()
	prints := make(map[string]fingerprint, len(abs))
	for _, p := range abs {
		fp, ok := w.prints[p]
		if !ok {
			fp = fingerprintOf(p)
		}
		prints[p] = fp
	}
	w.prints = prints
	return nil
}

// Close stops the Watcher and waits for its goroutines to exit. After Close
// no value is sent on Changes or Errors. Close is idempotent; later calls
// return the result of the first.
func (w *Watcher) Close() error {
	w.once.Do(func() {
		w.mu.Lock()
		w.closed = true
		w.mu.Unlock()
		close(w.done)
		w.wg.Wait()
		if w.fsw != nil {
			w.closeErr = w.fsw.Close()
		}
	})
	return w.closeErr
}

// drain forwards notifications to loop as a kick, and errors to Errors.
// It never blocks on anything but fsnotify, so fsnotify (which may hold its
// own lock while it sends) never waits for a fingerprint comparison.
func (w *Watcher) drain(kick chan<- struct{}) {
	defer w.wg.Done()
	poke := func() {
		select {
		case kick <- struct{}{}:
		default: // loop has a kick pending; it covers this event
		}
	}
	events, errs := w.fsw.Events, w.fsw.Errors
	for {
		select {
		case <-w.done:
			return
		case _, ok := <-events:
			if !ok {
				return
			}
			poke()
		case err, ok := <-errs:
			if !ok {
				return
			}
			w.report(fmt.Errorf("watching files: %w", err))
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				// Events were lost; only a comparison can tell what
				// happened.
				poke()
			}
		}
	}
}

// loop turns kicks and ticks into fingerprint comparisons until Close.
func (w *Watcher) loop(kick <-chan struct{}) {
	defer w.wg.Done()

	var tick <-chan time.Time
	if w.poll > 0 {
		t := time.NewTicker(w.poll)
		defer t.Stop()
		tick = t.C
	}
	// One timer for the whole burst: it fires Debounce after the latest
	// event, but no later than maxDelay after the first.
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var first time.Time // zero when no burst is pending

	for {
		select {
		case <-w.done:
			return
		case <-kick:
			now := time.Now()
			if first.IsZero() {
				first = now
			}
			timer.Reset(max(0, min(w.debounce, first.Add(w.maxDelay).Sub(now))))
		case <-timer.C:
			first = time.Time{}
			w.check()
		case <-tick:
			w.check()
		}
	}
}

// check re-arms the directory watches, compares every fingerprint with the
// last one, and signals if any differs.
func (w *Watcher) check() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	// Watches first: a change after this point raises an event, a change
	// before it shows in the fingerprints below.
	w.arm()
	changed := false
	for _, p := range w.paths {
		fp := fingerprintOf(p)
		if fp != w.prints[p] {
			w.prints[p] = fp
			changed = true
		}
	}
	w.mu.Unlock()
	if changed {
		select {
		case w.changes <- struct{}{}:
		default: // a signal is already pending; it covers this one
		}
	}
}

// report sends err to Errors unless the buffer is full.
func (w *Watcher) report(err error) {
	select {
	case w.errs <- err:
	default:
	}
}

// cleanPaths returns paths made absolute and clean, without duplicates, in
// their original order.
func cleanPaths(paths []string) ([]string, error) {
	out := make([]string, 0, len(paths))
	seen := make(map[string]bool, len(paths))
	for _, p := range paths {
		if p == "" {
			return nil, errors.New("watching files: empty path in list")
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, fmt.Errorf("watching file %q: %w", p, err)
		}
		if !seen[abs] {
			seen[abs] = true
			out = append(out, abs)
		}
	}
	return out, nil
}
