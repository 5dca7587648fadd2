package proxy

import (
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spacegate/spacegate/internal/testenv"
)

// tcpUpstream is a plain TCP listener on a fixed loopback address that
// accepts and closes connections (all a probe needs), and can go away and
// come back on the same address.
type tcpUpstream struct {
	t    *testing.T
	addr string
	ln   net.Listener
	wg   sync.WaitGroup
}

func newTCPUpstream(t *testing.T) *tcpUpstream {
	u := &tcpUpstream{t: t, addr: testenv.FreeAddr(t)}
	t.Cleanup(u.stop)
	return u
}

// start listens on the upstream's address.
func (u *tcpUpstream) start() {
	u.t.Helper()
	ln, err := net.Listen("tcp", u.addr)
	if err != nil {
		u.t.Fatalf("upstream listen %s: %v", u.addr, err)
	}
	u.ln = ln
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// stop closes the listener: connects are refused from here on.
func (u *tcpUpstream) stop() {
	if u.ln != nil {
		u.ln.Close()
		u.wg.Wait()
		u.ln = nil
	}
}

// upstreamUp reports whether /metrics says spacegate_upstream_up{route} is v.
func (e *env) upstreamUp(t *testing.T, route, v string) bool {
	return strings.Contains(e.get(t, "/metrics"), `spacegate_upstream_up{route="`+route+`"} `+v+"\n")
}

// readyz returns /readyz's status code and body.
func (e *env) readyz(t *testing.T) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(e.admin + "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// TestUpstreamProbeFastWhileDown: an upstream that stops answering is
// probed about every second, not at the normal interval, so that
// spacegate_upstream_up returns to 1 within about 2 s of its return.
func TestUpstreamProbeFastWhileDown(t *testing.T) {
	up := newTCPUpstream(t)
	up.start()
	// The normal interval is longer than every bound below: only the
	// fast retries can meet them.
	const every = 5 * time.Second
	e := newEnv(t, envOptions{noRedis: true, pgUpstream: up.addr, probe: probeTiming{every: every}})
	waitFor(t, 5*time.Second, "upstream_up 1", func() bool { return e.upstreamUp(t, "db", "1") })

	up.stop()
	waitFor(t, every+3*time.Second, "upstream_up 0 after the upstream went away", func() bool { return e.upstreamUp(t, "db", "0") })
	first := e.srv.Status().Routes[0].Upstream.CheckedAt
	waitFor(t, 2*time.Second, "a second probe of the down upstream", func() bool {
		h := e.srv.Status().Routes[0].Upstream
		return h.CheckedAt.After(first) && !h.Reachable
	})

	up.start()
	back := time.Now()
	waitFor(t, 2*time.Second, "upstream_up 1 within 2s of the upstream's return", func() bool { return e.upstreamUp(t, "db", "1") })
	t.Logf("upstream_up back to 1 %s after the listener reopened", time.Since(back).Round(time.Millisecond))
	if h := e.srv.Status().Routes[0].Upstream; !h.Reachable || h.Error != "" {
		t.Errorf("status after the return: %+v", h)
	}
}

// TestProbeTiming: retries double from retryMin to retryMax, and a probe
// of a down upstream waits no longer than retryMax.
func TestProbeTiming(t *testing.T) {
	p := probeTiming{}.withDefaults()
	want := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, time.Second, time.Second}
	for i, w := range want {
		if got := p.retryAfter(i + 1); got != w {
			t.Errorf("retryAfter(%d) = %s, want %s", i+1, got, w)
		}
	}
	if got := p.retryAfter(1000); got != time.Second {
		t.Errorf("retryAfter(1000) = %s", got)
	}
	if got := p.dialTimeout(5*time.Second, 0); got != 5*time.Second {
		t.Errorf("dial timeout while up = %s, want the connect timeout", got)
	}
	if got := p.dialTimeout(5*time.Second, 1); got != time.Second {
		t.Errorf("dial timeout while down = %s, want retryMax", got)
	}
	if got := p.dialTimeout(300*time.Millisecond, 3); got != 300*time.Millisecond {
		t.Errorf("dial timeout while down, short connect timeout = %s", got)
	}
}

// TestReadyzRequiresUpstream: by default /readyz ignores the upstream;
// with admin.ready_requires_upstream it answers 503, saying why, while no
// upstream is reachable, and 200 again once one is.
func TestReadyzRequiresUpstream(t *testing.T) {
	probed := func(e *env) func() bool {
		return func() bool { h := e.srv.Status().Routes[0].Upstream; return h != nil && !h.Reachable }
	}
	t.Run("off", func(t *testing.T) {
		up := newTCPUpstream(t) // never started: connects are refused
		e := newEnv(t, envOptions{noRedis: true, pgUpstream: up.addr})
		waitFor(t, 5*time.Second, "a failed probe", probed(e))
		if code, body := e.readyz(t); code != http.StatusOK || body != "ready\n" {
			t.Errorf("/readyz with the upstream down, option off: %d %q, want 200", code, body)
		}
	})
	t.Run("on", func(t *testing.T) {
		up := newTCPUpstream(t)
		e := newEnv(t, envOptions{noRedis: true, pgUpstream: up.addr, admin: "  ready_requires_upstream: true\n"})
		waitFor(t, 5*time.Second, "a failed probe", probed(e))
		code, body := e.readyz(t)
		if code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "not ready: no upstream is reachable") {
			t.Errorf("/readyz with the upstream down, option on: %d %q, want 503 saying why", code, body)
		}
		if strings.Contains(body, up.addr) {
			t.Errorf("/readyz names the upstream's address: %q", body)
		}
		if e.srv.Status().Ready {
			t.Error("status says ready")
		}
		up.start()
		waitFor(t, 3*time.Second, "/readyz 200 once the upstream is back", func() bool {
			code, body := e.readyz(t)
			return code == http.StatusOK && body == "ready\n"
		})
	})
}
