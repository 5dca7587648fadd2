package testenv

import (
	"testing"
	"time"
)

// waitPoll is how often WaitFor checks its condition.
const waitPoll = 20 * time.Millisecond

// WaitFor checks cond every 20ms until it holds, and fails t if d passes
// first; what names the condition in that failure. It is how tests wait
// for something to happen, never a fixed sleep.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(waitPoll)
	}
}
