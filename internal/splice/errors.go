package splice

import (
	"errors"
	"fmt"
)

var (
	// ErrCut ends a session that Session.Cut ended. A cut that found no
	// boundary within Hooks.CutGrace matches ErrAborted as well.
	ErrCut = errors.New("splice: session cut")
	// ErrAborted ends a session that Session.Abort ended.
	ErrAborted = errors.New("splice: session aborted")
	// ErrPanicked ends a session whose code panicked; OnEnd receives a
	// *PanicError, which matches it.
	ErrPanicked = errors.New("splice: session ended by a recovered panic")
	// ErrUpstreamLost ends a session whose upstream's stream ended while
	// the session was live and Hooks.UpstreamLost gave a notice, which the
	// client was sent. It wraps the read error, if there was one.
	ErrUpstreamLost = errors.New("splice: upstream lost; the client was told")
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

// PanicError ends a session whose code (its Framer) panicked: the value
// and the stack of the panicking goroutine, for the caller's log.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("splice: session ended by a recovered panic: %v", e.Value)
}
func (e *PanicError) Is(target error) bool { return target == ErrPanicked }
