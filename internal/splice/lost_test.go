package splice

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// lostHook is a Hooks.UpstreamLost that records its calls and gives
// cutNotice where the framer is at a boundary, as the gate's does.
type lostHook struct {
	framer Framer
	mu     sync.Mutex
	calls  []error
}

func (h *lostHook) lost(err error) []byte {
	h.mu.Lock()
	h.calls = append(h.calls, err)
	h.mu.Unlock()
	if _, ok := h.framer.Boundary(nil); !ok {
		return nil
	}
	return cutNotice
}

func (h *lostHook) asked() []error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]error(nil), h.calls...)
}

// streamRecorder is a Hooks.ClientStream that keeps what it was told.
type streamRecorder struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (r *streamRecorder) Advance(p []byte) {
	r.mu.Lock()
	r.buf.Write(p)
	r.mu.Unlock()
}

func (r *streamRecorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.String()
}

// resetConn closes c with a TCP reset (SO_LINGER 0), as a killed server's
// kernel may.
func resetConn(t *testing.T, c net.Conn) {
	t.Helper()
	tc, ok := c.(*net.TCPConn)
	if !ok {
		t.Fatalf("%T is not a TCP socket", c)
	}
	if err := tc.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	tc.Close()
}

// TestUpstreamLost: when the upstream's stream ends while the session is
// live, the hook is asked once, with the error if there was one; its
// notice follows the upstream's last whole message, then EOF, and the
// session ends with ErrUpstreamLost. Where it gives none (mid-message),
// the end is passed on as before.
func TestUpstreamLost(t *testing.T) {
	msg := toyMsg('D', []byte("row"))
	cases := []struct {
		name       string
		clientTLS  bool
		sent       []byte // by the upstream before it goes
		reset      bool   // it goes with a reset, not a FIN
		wantNotice bool
	}{
		{name: "FIN at a boundary", sent: msg, wantNotice: true},
		{name: "FIN at a boundary, TLS client", clientTLS: true, sent: msg, wantNotice: true},
		{name: "reset at a boundary", sent: msg, reset: true, wantNotice: true},
		{name: "FIN mid-message", sent: msg[:6]},
		{name: "reset mid-message", sent: msg[:6], reset: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			forEachImpl(t, func(t *testing.T, portable bool) {
				e := startEngine(t, portable, 1)
				f := &toyFramer{}
				hook := &lostHook{framer: f}
				rec := &streamRecorder{}
				ts := newSession(t, e, shape{clientTLS: tc.clientTLS}, Hooks{Framer: f, UpstreamLost: hook.lost, ClientStream: rec})

				// The client speaks first: the follower sees it before
				// the upstream does.
				query := toyMsg('Q', []byte("select 1"))
				if _, err := ts.client.Write(query); err != nil {
					t.Fatal(err)
				}
				got := make([]byte, len(query))
				ts.up.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadFull(ts.up, got); err != nil {
					t.Fatal(err)
				}
				if rec.String() != string(query) {
					t.Fatalf("ClientStream saw %q, want %q", rec.String(), query)
				}

				if _, err := ts.up.Write(tc.sent); err != nil {
					t.Fatal(err)
				}
				ts.client.SetReadDeadline(time.Now().Add(5 * time.Second))
				var all []byte
				if tc.reset {
					// The bytes reach the client first: a reset discards
					// what the gate has not read.
					all = make([]byte, len(tc.sent))
					if _, err := io.ReadFull(ts.client, all); err != nil {
						t.Fatal(err)
					}
					resetConn(t, ts.up)
				} else {
					ts.up.Close()
				}
				rest, err := io.ReadAll(ts.client)
				all = append(all, rest...)
				if err != nil {
					t.Fatalf("the client read %q, then %v; want EOF", all, err)
				}
				want := tc.sent
				if tc.wantNotice {
					want = append(append([]byte(nil), tc.sent...), cutNotice...)
				}
				if !bytes.Equal(all, want) {
					t.Fatalf("the client read %q, want %q", all, want)
				}
				ts.client.Close() // as a client does once it has read the end
				_, endErr := ts.ends.wait(t, 5*time.Second)
				if got := errors.Is(endErr, ErrUpstreamLost); got != tc.wantNotice {
					t.Errorf("OnEnd: %v; ErrUpstreamLost %v, want %v", endErr, got, tc.wantNotice)
				}
				calls := hook.asked()
				if len(calls) != 1 {
					t.Fatalf("UpstreamLost asked %d times, want once", len(calls))
				}
				if (calls[0] != nil) != tc.reset {
					t.Errorf("UpstreamLost asked with %v; an error wanted: %v", calls[0], tc.reset)
				}
				if tc.reset && tc.wantNotice && !errors.Is(endErr, calls[0]) {
					t.Errorf("OnEnd: %v, want it to wrap the read error %v", endErr, calls[0])
				}
			})
		})
	}
}

// watchedFramer counts the calls of Boundary: the event loop asks it when
// it takes a cut, which is how a test knows the cut is in force.
type watchedFramer struct {
	toyFramer
	boundaries atomic.Int32
}

func (f *watchedFramer) Boundary(p []byte) (int, bool) {
	f.boundaries.Add(1)
	return f.toyFramer.Boundary(p)
}

// TestUpstreamLostNotAskedAtTheEnd: a session that is cut (and waits for
// a boundary), or aborted, or whose client finished sending first (the
// upstream's end answers it), does not ask the hook when the upstream's
// stream ends.
func TestUpstreamLostNotAskedAtTheEnd(t *testing.T) {
	forEachImpl(t, func(t *testing.T, portable bool) {
		e := startEngine(t, portable, 1)
		for _, how := range []string{"cut", "abort", "client finished"} {
			f := &watchedFramer{}
			hook := &lostHook{framer: f}
			ts := newSession(t, e, shape{}, Hooks{Framer: f, UpstreamLost: hook.lost})
			switch how {
			case "cut":
				// Mid-message, so that the cut waits for a boundary; then
				// the upstream goes with a reset.
				half := toyMsg('D', []byte("row"))[:6]
				if _, err := ts.up.Write(half); err != nil {
					t.Fatal(err)
				}
				ts.client.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadFull(ts.client, make([]byte, len(half))); err != nil {
					t.Fatal(err)
				}
				ts.s.Cut(cutNotice)
				if !portable { // the portable engine takes a cut at once
					waitFor(t, 5*time.Second, "the loop to take the cut", func() bool { return f.boundaries.Load() > 0 })
				}
				resetConn(t, ts.up)
			case "abort":
				ts.s.Abort()
			default:
				closeWriteConn(t, ts.client)
				ts.up.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.Copy(io.Discard, ts.up); err != nil {
					t.Fatalf("the upstream did not see the client's EOF: %v", err)
				}
				ts.up.Close()
			}
			ts.client.SetReadDeadline(time.Now().Add(5 * time.Second))
			io.Copy(io.Discard, ts.client)
			ts.client.Close()
			ts.ends.wait(t, 5*time.Second)
			if n := len(hook.asked()); n != 0 {
				t.Errorf("%s: UpstreamLost asked %d times, want never", how, n)
			}
		}
	})
}
