package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/spacegate/spacegate/internal/testenv"
)

// flood holds sockets open against a listener from some source addresses,
// each reopened shortly after the gate closes it, and churns more: connect,
// then close with a reset, as fast as it can. Half the holders send
// nothing; the other half send one byte, the first of a TLS record, and
// stall, which gets them past the kernel's deferred accept into the pool.
type flood struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	dials  atomic.Int64
	open   atomic.Int64
}

func startFlood(t testing.TB, addr string, srcs []string, holders, churners int, pause time.Duration) *flood {
	ctx, cancel := context.WithCancel(context.Background())
	f := &flood{cancel: cancel}
	sem := make(chan struct{}, 200) // dials in flight at the start, to stay within the listen backlog
	sleep := func(d time.Duration) {
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
	for i := range holders + churners {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(srcs[i%len(srcs)])}, Timeout: 5 * time.Second}
		churn := i >= holders
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			first := true
			for ctx.Err() == nil {
				if first {
					sem <- struct{}{}
				}
				nc, err := d.DialContext(ctx, "tcp", addr)
				if first {
					<-sem
					first = false
				}
				if err != nil {
					sleep(pause)
					continue
				}
				f.dials.Add(1)
				if churn {
					resetClose(nc)
					continue
				}
				f.open.Add(1)
				if i%2 == 1 {
					nc.Write([]byte{tlsRecordHandshake})
				}
				stop := context.AfterFunc(ctx, func() { nc.Close() })
				io.Copy(io.Discard, nc) // until the gate closes it
				stop()
				nc.Close()
				f.open.Add(-1)
				sleep(pause)
			}
		}()
	}
	t.Cleanup(f.stop)
	return f
}

func (f *flood) stop() {
	f.cancel()
	f.wg.Wait()
}

// connectTimes connects n times with pgx, one after another, and returns
// each connect's duration; any failure fails the test.
func connectTimes(t *testing.T, e *env, n int) []time.Duration {
	t.Helper()
	var times []time.Duration
	for i := range n {
		start := time.Now()
		c, err := pgConnect(t, e.pgConnString(e.client))
		if err != nil {
			t.Errorf("attempt %d of %d: %v", i+1, n, err)
			continue
		}
		times = append(times, time.Since(start))
		if got := mustQueryInt(t, c, "select 6*7"); got != 42 {
			t.Errorf("select 6*7 = %d", got)
		}
		c.Close(context.Background())
		// Not a wait: the pace of a real client that reconnects now
		// and then, so that the attempts sample the whole flood.
		time.Sleep(50 * time.Millisecond)
	}
	return times
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))].Round(100 * time.Microsecond)
}

// TestFloodRealClientsGetIn: while thousands of idle and churned sockets
// come from a stranger's address, from twenty strangers' addresses, and
// from the client's own address (an office behind one NAT), a client with
// a valid certificate connects every time, about as fast as without a
// flood. Strangers are closed before TLS once the pool is under pressure.
func TestFloodRealClientsGetIn(t *testing.T) {
	const holders, churners, attempts = 2000, 1, 20
	setFDLimit(t, uint64(fdLimit(t).Max))
	if got := fdLimit(t).Cur; got < 4*holders+500 {
		t.Skipf("RLIMIT_NOFILE hard limit %d is below the %d this test needs", got, 4*holders+500)
	}
	e := newEnv(t, envOptions{noRedis: true, handshakeTimeout: "10s"})
	calm := connectTimes(t, e, attempts)
	t.Logf("no flood: %d of %d connected, connect p50 %s, p99 %s", len(calm), attempts, percentile(calm, 0.5), percentile(calm, 0.99))
	// 3x the calm p99, as issue 12 asks, but not under 2s: on a shared
	// machine the calm figure itself swings by hundreds of milliseconds.
	limit := max(3*percentile(calm, 0.99), 2*time.Second)

	strangers := make([]string, 20)
	for i := range strangers {
		strangers[i] = fmt.Sprintf("127.0.0.%d", 2+i)
	}
	refused := func(reason string) float64 {
		return e.metricSum(t, "spacegate_connections_refused_total", `reason="`+reason+`"`)
	}
	for _, phase := range []struct {
		name   string
		srcs   []string
		preTLS bool // the flood's sources are allowed by no route
	}{
		{"from a stranger's address", strangers[:1], true},
		{"from twenty strangers' addresses", strangers, true},
		{"from the client's own address", []string{"127.0.0.1"}, false},
	} {
		t.Run(phase.name, func(t *testing.T) {
			preTLS, evicted := refused("ip_not_allowed_pre_tls"), refused("pending_evicted")
			cpu := cpuTime(t)
			start := time.Now()
			f := startFlood(t, e.pgAddr, phase.srcs, holders, churners, 200*time.Millisecond)
			waitFor(t, 20*time.Second, "the flood to be under way", func() bool { return f.dials.Load() >= holders })
			times := connectTimes(t, e, attempts)
			held := f.open.Load()
			f.stop()
			spent, took := cpuTime(t)-cpu, time.Since(start)
			preTLS, evicted = refused("ip_not_allowed_pre_tls")-preTLS, refused("pending_evicted")-evicted
			t.Logf("flood %s: %d dials (%d sockets open at the end), %d closed before TLS, %d evicted; process CPU %s in %s",
				phase.name, f.dials.Load(), held, int(preTLS), int(evicted), spent.Round(time.Millisecond), took.Round(time.Millisecond))
			t.Logf("real client: %d of %d connected, connect p50 %s, p99 %s (no flood: p50 %s, p99 %s)",
				len(times), attempts, percentile(times, 0.5), percentile(times, 0.99), percentile(calm, 0.5), percentile(calm, 0.99))
			if len(times) != attempts {
				t.Errorf("%d of %d attempts connected during the flood", len(times), attempts)
			}
			if p := percentile(times, 0.99); p > limit {
				t.Errorf("connect p99 %s during the flood, want at most %s (3x the calm p99, at least 2s)", p, limit)
			}
			if phase.preTLS && preTLS == 0 {
				t.Errorf("no connection of a disallowed source was closed before TLS")
			}
			for _, le := range e.refusals("ip_not_allowed_pre_tls") {
				if src, _ := le.ContextMap()["source"].(string); strings.HasPrefix(src, "127.0.0.1:") {
					t.Errorf("a connection of an allowed source was closed before TLS: %v", le.ContextMap())
				}
			}
			if evicted == 0 && !phase.preTLS {
				t.Errorf("no idle socket was evicted")
			}
			waitFor(t, 15*time.Second, "the pool to empty", func() bool { return e.srv.pending.Load() == 0 })
		})
	}
}

// TestStrangerBuysFewHandshakes: a source that no route allows gets a full
// TLS handshake and a sentence a few times in a window; after that its
// connections are reset before TLS, calm pool or not, so that a
// ClientHello flood costs the gate no handshakes. Allowed clients are
// unaffected.
func TestStrangerBuysFewHandshakes(t *testing.T) {
	e := newEnv(t, envOptions{noPostgres: true})
	hello := clientHello(t)
	// helloAnswered sends a ClientHello from src and reports whether the
	// gate answered with a handshake record (a ServerHello) rather than a
	// reset.
	helloAnswered := func(src string) bool {
		nc, err := dialFrom(src)(context.Background(), "tcp", e.redisAdr)
		if err != nil {
			return false // reset before connect returned
		}
		defer nc.Close()
		nc.Write(hello)
		nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		var b [1]byte
		_, err = io.ReadFull(nc, b[:])
		return err == nil && b[0] == tlsRecordHandshake
	}
	// A ClientHello flood that hangs up after the gate's first flight
	// (refused handshake_failed, before the address is checked) spends
	// the courtesy too.
	const hangups = 200
	answered := 0
	for range hangups {
		if helloAnswered("127.0.0.5") {
			answered++
		}
	}
	t.Logf("%d ClientHellos from a stranger that hang up: %d answered with a handshake", hangups, answered)
	if answered < courtesyRefusals || answered > 3*courtesyRefusals {
		t.Errorf("%d of %d ClientHellos that hang up got a handshake, want about %d", answered, hangups, courtesyRefusals+1)
	}
	// The courtesy: a client with a good certificate from a disallowed
	// address reads why, courtesyRefusals times.
	ping := func() error {
		rc := e.redisClient(e.client, dialFrom("127.0.0.3")) // a new connection each time
		defer rc.Close()
		return rc.Ping(context.Background()).Err()
	}
	for i := range courtesyRefusals + 1 {
		if err := ping(); err == nil || !strings.Contains(err.Error(), "source address 127.0.0.3 is not allowed for route cache") {
			t.Fatalf("attempt %d from 127.0.0.3: %v, want the ip_not_allowed sentence", i+1, err)
		}
	}
	stranger := netip.MustParseAddr("127.0.0.3")
	waitFor(t, 5*time.Second, "the refusals to be counted", func() bool { return e.srv.refusals.courtesySpent(stranger) })
	if err := ping(); err == nil || strings.Contains(err.Error(), "not allowed") {
		t.Fatalf("after the courtesy: %v, want the connection reset before TLS", err)
	}
	cpu := cpuTime(t)
	start := time.Now()
	const hellos = 1000
	var late atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range hellos / 4 {
				if helloAnswered("127.0.0.3") {
					late.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d ClientHellos from a stranger past its courtesy: %d answered with a handshake; %s, process CPU %s",
		hellos, late.Load(), time.Since(start).Round(time.Millisecond), (cpuTime(t) - cpu).Round(time.Millisecond))
	if late.Load() != 0 {
		t.Errorf("%d of %d ClientHellos got a handshake after the courtesy was spent", late.Load(), hellos)
	}
	if got := e.metricSum(t, "spacegate_connections_refused_total", `reason="ip_not_allowed_pre_tls",route="cache"`); got < hellos {
		t.Errorf("ip_not_allowed_pre_tls counted %v times, want at least %d", got, hellos)
	}
	// For scale: what each ClientHello costs when it is answered, as every
	// one was before the courtesy cap.
	cpu = cpuTime(t)
	const answeredHellos = 200
	for i := range answeredHellos {
		if !helloAnswered("127.0.0.1") {
			t.Fatalf("ClientHello %d from an allowed address got no handshake", i+1)
		}
	}
	t.Logf("%d ClientHellos from an allowed address, each answered with a handshake: process CPU %s",
		answeredHellos, (cpuTime(t) - cpu).Round(time.Millisecond))
	// Another stranger still gets its sentence, and an allowed client its session.
	if !helloAnswered("127.0.0.4") {
		t.Error("a first ClientHello from another stranger got no handshake")
	}
	ok := e.redisClient(e.client, nil)
	defer ok.Close()
	if err := ok.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("an allowed client: %v", err)
	}
}

// TestRefusalLogBounded: 1,000 refusals from one source write a few full
// lines and, at the end of the window, one summary line with the count;
// the metric counts all 1,000.
func TestRefusalLogBounded(t *testing.T) {
	e := newEnv(t, envOptions{noPostgres: true})
	const n = 1000
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 512)
			for range n / 4 {
				nc, err := net.Dial("tcp", e.redisAdr)
				if err != nil {
					t.Error(err)
					return
				}
				nc.Write([]byte("GET k\r\n")) // plaintext: refused tls_required
				nc.SetReadDeadline(time.Now().Add(5 * time.Second))
				if k, err := nc.Read(buf); err != nil || !strings.HasPrefix(string(buf[:k]), "-ERR") {
					t.Errorf("plaintext command: %q, %v", buf[:k], err)
				}
				nc.Close()
			}
		}()
	}
	wg.Wait()
	waitFor(t, 5*time.Second, "every refusal counted", func() bool {
		return e.metricSum(t, "spacegate_connections_refused_total", `reason="tls_required"`) == n
	})
	full := e.refusals("tls_required")
	if len(full) != refusalLogBurst {
		t.Errorf("%d full refusal lines for %d refusals, want %d", len(full), n, refusalLogBurst)
	}
	e.srv.refusals.flush(time.Now()) // the window ends
	summary := e.logs.FilterMessage("connections refused (summary)").All()
	if len(summary) != 1 {
		t.Fatalf("%d summary lines, want 1: %v", len(summary), summary)
	}
	if f := summary[0].ContextMap(); f["source"] != "127.0.0.1" || f["reason"] != "tls_required" || f["count"] != int64(n) {
		t.Errorf("summary line %v, want source 127.0.0.1, reason tls_required, count %d", f, n)
	}
	// The bytes written, as the JSON encoder of NewLogger writes them.
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	lines, bytes := 0, 0
	for _, le := range append(full, summary...) {
		b, err := enc.EncodeEntry(le.Entry, le.Context)
		if err != nil {
			t.Fatal(err)
		}
		lines++
		bytes += b.Len()
	}
	one, _ := enc.EncodeEntry(full[0].Entry, full[0].Context)
	t.Logf("%d refusals: %d lines, %d bytes logged (one line each, as before: %d lines, about %d bytes)",
		n, lines, bytes, n, n*one.Len())
	// A second window starts afresh: its first refusal is logged in full.
	nc, err := net.Dial("tcp", e.redisAdr)
	if err != nil {
		t.Fatal(err)
	}
	nc.Write([]byte("GET k\r\n"))
	nc.Read(make([]byte, 512))
	nc.Close()
	waitFor(t, 5*time.Second, "the next window's first line", func() bool { return len(e.refusals("tls_required")) == refusalLogBurst+1 })
}

// TestCapsRefuseNamingTheLimit: the per-source and per-certificate caps
// refuse with 53300 (and -ERR for Redis) naming the limit and its value,
// and by default one source cannot take every slot.
func TestCapsRefuseNamingTheLimit(t *testing.T) {
	t.Run("set", func(t *testing.T) {
		e := newEnv(t, envOptions{rules: []string{"127.0.0.0/24"},
			limits: "  max_connections_per_source: 2\n  max_connections_per_certificate: 3\n"})
		var open []interface{ Close(context.Context) error }
		defer func() {
			for _, c := range open {
				c.Close(context.Background())
			}
		}()
		connect := func(from string) error {
			c, err := pgConnect(t, e.pgConnString(e.client), withDialFrom(from))
			if err == nil {
				open = append(open, c)
			}
			return err
		}
		want53300 := func(err error, msg string) {
			t.Helper()
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "53300" || pgErr.Message != msg {
				t.Fatalf("%v, want FATAL 53300 %q", err, msg)
			}
		}
		for _, from := range []string{"127.0.0.1", "127.0.0.1"} {
			if err := connect(from); err != nil {
				t.Fatal(err)
			}
		}
		want53300(connect("127.0.0.1"), "too many connections from 127.0.0.1 (limit 2 per source address)")
		if err := connect("127.0.0.2"); err != nil {
			t.Fatal(err)
		}
		want53300(connect("127.0.0.3"), fmt.Sprintf("too many connections with client certificate %s (limit 3 per certificate)", e.client.Serial))
		// The certificate's cap spans routes: Redis says it with -ERR.
		rc := e.redisClient(e.client, dialFrom("127.0.0.3"))
		err := rc.Ping(context.Background()).Err()
		rc.Close()
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("spacegate: too many connections with client certificate %s (limit 3 per certificate)", e.client.Serial)) {
			t.Fatalf("redis from 127.0.0.3: %v, want -ERR naming the certificate's limit", err)
		}
		// Another certificate from the same address gets in.
		other := e.pki.Client(t, "other", testenv.ForRoutes("db"))
		c, err := pgConnect(t, e.pgConnString(other), withDialFrom("127.0.0.3"))
		if err != nil {
			t.Fatalf("another certificate: %v", err)
		}
		open = append(open, c)
		for _, want := range []string{`reason="source_connection_limit",route="db"} 1`, `reason="certificate_connection_limit",route="db"} 1`, `reason="certificate_connection_limit",route="cache"} 1`} {
			waitFor(t, 5*time.Second, want+" in /metrics", func() bool { return strings.Contains(e.get(t, "/metrics"), want) })
		}
	})
	t.Run("default", func(t *testing.T) {
		// max_connections 100: each source and certificate may hold 64.
		e := newEnv(t, envOptions{noPostgres: true, rules: []string{"127.0.0.0/24"}})
		certs := []*testenv.ClientCert{e.client, e.pki.Client(t, "second", testenv.ForRoutes("cache"))}
		var open []*tls.Conn
		defer func() {
			for _, c := range open {
				c.Close()
			}
		}()
		ping := func(cert *testenv.ClientCert, from string) (string, error) {
			nc, err := dialFrom(from)(context.Background(), "tcp", e.redisAdr)
			if err != nil {
				return "", err
			}
			tc := tls.Client(nc, &tls.Config{RootCAs: e.pki.ServerPool(), ServerName: "localhost", Certificates: []tls.Certificate{cert.TLS}})
			tc.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := tc.Write([]byte("PING\r\n")); err != nil {
				tc.Close()
				return "", err
			}
			line, err := bufio.NewReader(tc).ReadString('\n')
			tc.SetDeadline(time.Time{})
			open = append(open, tc)
			return line, err
		}
		for i := range 64 {
			if line, err := ping(certs[i%2], "127.0.0.1"); err != nil || line != "+PONG\r\n" {
				t.Fatalf("session %d from 127.0.0.1: %q, %v", i+1, line, err)
			}
		}
		line, _ := ping(certs[0], "127.0.0.1")
		if want := "-ERR spacegate: too many connections from 127.0.0.1 (limit 64 per source address)"; !strings.HasPrefix(line, want) {
			t.Errorf("the 65th session from one address: %q, want %q", line, want)
		}
		if line, err := ping(certs[0], "127.0.0.2"); err != nil || line != "+PONG\r\n" {
			t.Errorf("another address while one holds its share: %q, %v", line, err)
		}
	})
}
