package splice

import (
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spacegate/spacegate/internal/testenv"
)

// TestMassCutStalledClients cuts 150 sessions whose clients stopped
// reading while their upstreams flood them: every session ends within the
// linger bound, and no OS thread waits on one (the process stays under 40
// threads).
func TestMassCutStalledClients(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("counts threads in /proc/self/status")
	}
	forEachImpl(t, func(t *testing.T, portable bool) {
		e := startEngine(t, portable, 2)
		const n = 150
		sessions := make([]*testSession, n)
		for i := range sessions {
			// Half are cut at once, their notice queued behind what the
			// client does not read (the linger bound ends them); half wait
			// for a boundary that cannot come (the cut grace ends them).
			h := Hooks{Framer: &toyFramer{}}
			if i%2 == 1 {
				h.Framer = nil
			}
			ts := newSession(t, e, shape{clientTLS: i%3 == 0, small: true}, h)
			go floodMessages(ts.up, 2000)
			sessions[i] = ts
		}
		// Wait until the floods have filled every buffer on the way: the
		// upstreams' writes block.
		for _, ts := range sessions {
			waitFor(t, 10*time.Second, "the gate to stop taking the upstream's bytes", func() bool {
				ts.up.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
				_, err := ts.up.Write(make([]byte, 64<<10))
				return isTimeout(err)
			})
			ts.up.SetWriteDeadline(time.Time{})
		}
		peakThreads := testenv.PeakThreads(t)
		start := time.Now()
		for _, ts := range sessions {
			ts.s.Cut(cutNotice)
		}
		for _, ts := range sessions {
			if _, err := ts.ends.wait(t, 10*time.Second); !errors.Is(err, ErrCut) {
				t.Errorf("OnEnd: %v, want ErrCut", err)
			}
		}
		took := time.Since(start)
		peak := peakThreads()
		t.Logf("150 stalled sessions cut in %v; at most %d threads", took, peak)
		if m := peak; m >= 40 {
			t.Errorf("%d OS threads during the cut, want under 40", m)
		}
		if took > DefaultCutGrace+2*time.Second {
			t.Errorf("the cut took %v, want about the cut grace of %v", took, DefaultCutGrace)
		}
	})
}

// panicFramer panics once it has seen enough bytes.
type panicFramer struct{ seen int }

func (f *panicFramer) Advance(p []byte) {
	if f.seen += len(p); f.seen > 10 {
		panic("framer bug")
	}
}
func (f *panicFramer) Boundary([]byte) (int, bool) { return 0, true }

// TestPanicEndsOneSession: a panic in a session's framer ends that
// session with a *PanicError, and the others go on; a panic in OnEnd is
// reported to OnPanic.
func TestPanicEndsOneSession(t *testing.T) {
	forEachImpl(t, func(t *testing.T, portable bool) {
		checkFds(t)
		var panics atomic.Int32
		e, err := Start(Options{Loops: 1, Portable: portable, OnPanic: func(v any, stack []byte) {
			if v != "OnEnd bug" || !strings.Contains(string(stack), "TestPanicEndsOneSession") {
				t.Errorf("OnPanic(%v) with stack\n%s", v, stack)
			}
			panics.Add(1)
		}})
		if err != nil {
			t.Fatal(err)
		}
		defer e.Stop()
		good := newSession(t, e, shape{}, Hooks{})
		bad := newSession(t, e, shape{}, Hooks{Framer: &panicFramer{}})
		bad.up.Write(make([]byte, 100))
		_, err = bad.ends.wait(t, 5*time.Second)
		var pe *PanicError
		if !errors.Is(err, ErrPanicked) || !errors.As(err, &pe) || pe.Value != "framer bug" || !strings.Contains(string(pe.Stack), "panicFramer") {
			t.Fatalf("OnEnd: %v, want a *PanicError of the framer's", err)
		}
		// A panic in OnEnd goes to OnPanic.
		a, b := tcpPair(t)
		c, d := tcpPair(t)
		ended := make(chan struct{})
		s, err := e.Add(Side{Conn: Wrap(b)}, Side{Conn: Wrap(c)}, Hooks{OnEnd: func(Stats, error) {
			defer close(ended)
			panic("OnEnd bug")
		}})
		if err != nil {
			t.Fatal(err)
		}
		s.Abort()
		<-ended
		waitFor(t, 5*time.Second, "OnPanic", func() bool { return panics.Load() == 1 })
		a.Close()
		d.Close()
		if err := sendAll(good.client, []byte("still here")); err != nil {
			t.Fatal(err)
		}
		if got, err := io.ReadAll(good.up); err != nil || string(got) != "still here" {
			t.Fatalf("the other session: %q, %v", got, err)
		}
	})
}

// TestNoDescriptor: on the loops, a Conn with no descriptor (net.Pipe)
// runs on goroutines, with the same contract.
func TestNoDescriptor(t *testing.T) {
	e := startEngine(t, false, 1)
	ts := newSession(t, e, shape{pair: pipePair, clientTLS: true}, Hooks{})
	var g errGroup
	g.spawn(func() error { _, err := ts.client.Write([]byte("ping")); return err })
	buf := make([]byte, 4)
	if _, err := io.ReadFull(ts.up, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("%q %v", buf, err)
	}
	if err := g.wait(); err != nil {
		t.Fatal(err)
	}
	ts.s.Abort()
	if _, err := ts.ends.wait(t, 5*time.Second); !errors.Is(err, ErrAborted) {
		t.Fatalf("OnEnd: %v, want ErrAborted", err)
	}
}

func pipePair(t *testing.T) (net.Conn, net.Conn) {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestStop ends the sessions still live with ErrStopped, and refuses new
// ones.
func TestStop(t *testing.T) {
	forEachImpl(t, func(t *testing.T, portable bool) {
		checkFds(t)
		e, err := Start(Options{Loops: 2, Portable: portable})
		if err != nil {
			t.Fatal(err)
		}
		var all []*testSession
		for range 10 {
			all = append(all, newSession(t, e, shape{clientTLS: true}, Hooks{}))
		}
		e.Stop()
		for _, ts := range all {
			if _, err := ts.ends.wait(t, time.Second); !errors.Is(err, ErrStopped) || !errors.Is(err, ErrAborted) {
				t.Errorf("OnEnd: %v, want ErrStopped", err)
			}
		}
		a, b := tcpPair(t)
		if _, err := e.Add(Side{Conn: Wrap(a)}, Side{Conn: Wrap(b)}, Hooks{}); !errors.Is(err, ErrStopped) {
			t.Errorf("Add after Stop: %v, want ErrStopped", err)
		}
		e.Stop()
	})
}

// TestCopyBufGrowsForBulkAndShrinksWhenIdle: on goroutines, small reads
// keep the small buffer; a read that fills it switches to a pooled large
// one, which goes back to the pool once reads are small again.
func TestCopyBufGrowsForBulkAndShrinksWhenIdle(t *testing.T) {
	pool := &sync.Pool{New: func() any { b := make([]byte, portableBufSize); return &b }}
	b := copyBuf{pool: pool}
	for _, step := range []struct {
		last int
		want int
	}{
		{0, portableSmallBufSize},
		{100, portableSmallBufSize},
		{portableSmallBufSize, portableBufSize}, // filled: bulk
		{portableBufSize, portableBufSize},
		{9000, portableBufSize}, // still bulk-sized
		{10, portableSmallBufSize},
	} {
		if got := len(b.next(step.last)); got != step.want {
			t.Fatalf("after a read of %d: buffer of %d, want %d", step.last, got, step.want)
		}
	}
	if b.big != nil {
		t.Fatal("large buffer kept after small reads")
	}
}
