package proxy

import (
	"bufio"
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestPlaintextAfterFailedProxyHeader sends, from an address no rule
// allows and with no certificate, plaintext whose first byte may start a
// PROXY header but is not one: the gate once read the refusal's reply
// from a nil client and ended the process. The stranger must get a
// sentence, and the gate must go on serving.
func TestPlaintextAfterFailedProxyHeader(t *testing.T) {
	e := newEnv(t, envOptions{})
	for _, tc := range []struct {
		name, addr, send, want string
	}{
		{"redis PING", e.redisAdr, "PING\r\n", "-ERR spacegate: route cache requires TLS"},
		{"redis empty line", e.redisAdr, "\r\nPING\r\n", "-ERR spacegate: route cache requires TLS"},
		{"redis PROXY prefix", e.redisAdr, "PROXY TCP9 x\r\n", ""},
		{"postgres P", e.pgAddr, "PING\r\n\r\n\r\n", ""},
		{"postgres CR", e.pgAddr, "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			nc, err := dialFrom("127.0.0.2")(ctx, "tcp", tc.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := nc.Write([]byte(tc.send)); err != nil {
				t.Fatal(err)
			}
			line, _ := bufio.NewReader(nc).ReadString('\n')
			if tc.want != "" && !strings.HasPrefix(line, tc.want) {
				t.Fatalf("answer %q, want it to start %q", line, tc.want)
			}
		})
	}
	// A recovered panic would keep the gate up, but is still a bug.
	if m := e.get(t, "/metrics"); !strings.Contains(m, "\nspacegate_panics_total 0\n") {
		t.Fatalf("want spacegate_panics_total 0 in /metrics")
	}
	// The gate still serves its clients.
	rc := e.redisClient(e.client, nil)
	defer rc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rc.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING through the gate after the attack: %v", err)
	}
	c, err := pgConnect(t, e.pgConnString(e.client))
	if err != nil {
		t.Fatalf("connect after the attack: %v", err)
	}
	c.Close(ctx)
}

// TestPanicEndsOneConnection panics in a connection's code at each place
// where a different goroutine runs it: the connection's own (after the
// checks), the engine's (in the session's framer, at its first bytes), and
// the one that finishes a session. Each time only that connection ends: the
// panic is logged with its stack and counted, the slots it held are
// released, the next client gets in, and the gate still shuts down cleanly.
func TestPanicEndsOneConnection(t *testing.T) {
	for _, tc := range []struct {
		name string
		at   hookPoint
	}{
		{"after the checks", hookAdmitted},
		{"on the engine", hookOnEngine},
		{"finishing a session", hookFinish},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var armed atomic.Bool
			armed.Store(true)
			e := newEnv(t, envOptions{noRedis: true, testHook: func(_ *conn, p hookPoint) {
				if p == tc.at && armed.CompareAndSwap(true, false) {
					panic("test panic at " + tc.name)
				}
			}})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if c, err := pgConnect(t, e.pgConnString(e.client)); err == nil {
				// The panic came after the session started: end it, which
				// reaches the finishing goroutine.
				_ = c.Close(ctx)
			}
			waitFor(t, 10*time.Second, "the panic's log line", func() bool {
				return e.logs.FilterMessageSnippet("panic in connection code").Len() == 1
			})
			entry := e.logs.FilterMessageSnippet("panic in connection code").All()[0]
			if stack := entry.ContextMap()["stack"]; !strings.Contains(fmt.Sprint(stack), "crash_test.go") {
				t.Errorf("log line's stack does not show where the panic was:\n%v", stack)
			}
			if m := e.get(t, "/metrics"); !strings.Contains(m, "\nspacegate_panics_total 1\n") {
				t.Errorf("want spacegate_panics_total 1 in /metrics")
			}
			c, err := pgConnect(t, e.pgConnString(e.client))
			if err != nil {
				t.Fatalf("next client after the panic: %v", err)
			}
			if got := mustQueryInt(t, c, "SELECT 1"); got != 1 {
				t.Fatalf("SELECT 1 = %d", got)
			}
			_ = c.Close(ctx)
			waitFor(t, 10*time.Second, "every slot released", func() bool {
				e.srv.limits.mu.Lock()
				defer e.srv.limits.mu.Unlock()
				return e.srv.limits.total == 0 && e.srv.pending.Load() == 0 && e.srv.conns.len() == 0
			})
			if err := e.shutdown(10 * time.Second); err != nil {
				t.Fatalf("Run: %v", err)
			}
		})
	}
}
