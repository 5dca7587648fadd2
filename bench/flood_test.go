package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spacegate/spacegate/internal/testenv"
)

// listenLoopback listens on 127.0.0.1 and hands each connection to serve
// until the test ends. It records the source address of each.
func listenLoopback(t *testing.T, serve func(net.Conn)) (addr string, sources func() map[netip.Addr]int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		srcs = make(map[netip.Addr]int)
		wg   sync.WaitGroup
	)
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			srcs[addrPortOf(c.RemoteAddr()).Addr()]++
			mu.Unlock()
			wg.Go(func() { serve(c) })
		}
	})
	return ln.Addr().String(), func() map[netip.Addr]int {
		mu.Lock()
		defer mu.Unlock()
		out := make(map[netip.Addr]int, len(srcs))
		for k, v := range srcs {
			out[k] = v
		}
		return out
	}
}

func addrPortOf(a net.Addr) netip.AddrPort {
	return a.(*net.TCPAddr).AddrPort()
}

func TestIdleFloodHoldsAndReopens(t *testing.T) {
	const n = 50
	// The server holds the first n sockets and closes every later one at
	// once, as a proxy with a full pending pool does.
	var accepted atomic.Int64
	var held sync.WaitGroup
	stopHeld := make(chan struct{})
	addr, sources := listenLoopback(t, func(c net.Conn) {
		defer c.Close()
		if accepted.Add(1) <= n {
			held.Add(1)
			defer held.Done()
			<-stopHeld
		}
	})
	f := startIdleFlood(context.Background(), addr, strangerAddr, n)
	testenv.WaitFor(t, 10*time.Second, "flood did not open its sockets", func() bool { return f.open.Load() == n })
	close(stopHeld) // every held socket is closed; each must come back
	testenv.WaitFor(t, 10*time.Second, "flood did not reopen the sockets the server closed", func() bool { return f.opened.Load() >= 3*n })
	f.stop()
	if got := f.open.Load(); got != 0 {
		t.Errorf("after stop, %d flood sockets still open", got)
	}
	srcs := sources()
	if len(srcs) != 1 || srcs[strangerAddr] == 0 {
		t.Errorf("connections came from %v, want 127.0.0.2 only", srcs)
	}
	// Stopped means stopped: once the accept queue has drained (dials
	// made before stop), no connection arrives.
	last, since := accepted.Load(), time.Now()
	testenv.WaitFor(t, 5*time.Second, "connections still arriving after stop", func() bool {
		if n := accepted.Load(); n != last {
			last, since = n, time.Now()
		}
		return time.Since(since) > 300*time.Millisecond
	})
}

func TestIdleFloodEndsWithContext(t *testing.T) {
	addr, _ := listenLoopback(t, func(c net.Conn) {
		defer c.Close()
		io.Copy(io.Discard, c) // hold until the flood closes
	})
	ctx, cancel := context.WithCancel(context.Background())
	f := startIdleFlood(ctx, addr, clientAddr, 20)
	testenv.WaitFor(t, 10*time.Second, "flood did not open its sockets", func() bool { return f.open.Load() == 20 })
	cancel()
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("flood goroutines still running 5s after its context ended")
	}
	f.stop()
}

// selfSignedTLS returns a server certificate for tests.
func selfSignedTLS(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestHelloFloodGetsServerFlights(t *testing.T) {
	hello, err := clientHello()
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{selfSignedTLS(t)}, ClientAuth: tls.RequireAnyClientCert}
	var started atomic.Int64
	// A PostgreSQL-like server: 'S' to the SSLRequest, then TLS.
	addr, sources := listenLoopback(t, func(c net.Conn) {
		defer c.Close()
		req := make([]byte, 8)
		if _, err := io.ReadFull(c, req); err != nil || !bytes.Equal(req, sslRequest) {
			return
		}
		if _, err := c.Write([]byte{'S'}); err != nil {
			return
		}
		started.Add(1)
		tc := tls.Server(c, cfg)
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		tc.Handshake() // fails when the flood hangs up
	})
	f := startHelloFlood(context.Background(), addr, strangerAddr, 4, hello)
	testenv.WaitFor(t, 20*time.Second, "the ClientHello flood counted no server flights", func() bool { return f.handshakes.Load() >= 20 })
	f.stop()
	if f.refused.Load() != 0 {
		t.Errorf("%d SSLRequests counted refused by a server that answers 'S'", f.refused.Load())
	}
	if hs, st := f.handshakes.Load(), started.Load(); hs > st {
		t.Errorf("%d handshakes counted, only %d TLS handshakes started", hs, st)
	}
	if srcs := sources(); len(srcs) != 1 || srcs[strangerAddr] == 0 {
		t.Errorf("connections came from %v, want 127.0.0.2 only", srcs)
	}
}

func TestHelloFloodCountsRefusals(t *testing.T) {
	hello, err := clientHello()
	if err != nil {
		t.Fatal(err)
	}
	// A server that answers 'N' (no TLS) and closes.
	addr, _ := listenLoopback(t, func(c net.Conn) {
		defer c.Close()
		req := make([]byte, 8)
		if _, err := io.ReadFull(c, req); err == nil {
			c.Write([]byte{'N'})
		}
	})
	f := startHelloFlood(context.Background(), addr, strangerAddr, 2, hello)
	testenv.WaitFor(t, 10*time.Second, "no refusal counted", func() bool { return f.refused.Load() >= 5 })
	f.stop()
	if f.handshakes.Load() != 0 {
		t.Errorf("%d handshakes counted against a server that speaks no TLS", f.handshakes.Load())
	}
}

func TestParsePgbenchConnect(t *testing.T) {
	const ok = `pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: <builtin: select only>
number of clients: 2
number of transactions actually processed: 198
number of failed transactions: 0 (0.000%)
latency average = 0.412 ms
rate limit schedule lag: avg 0.101 (max 0.950) ms
average connection time = 6.524 ms
tps = 19.812345 (including reconnection times)
`
	const aborted = `pgbench: error: connection to server at "127.0.0.1", port 6432 failed: server closed the connection unexpectedly
pgbench: error: client 1 aborted while establishing connection
number of transactions actually processed: 57
average connection time = 9.000 ms
tps = 5.700000 (including reconnection times)
pgbench: error: Run was aborted; the above results are incomplete.
`
	const setup = `pgbench: error: connection to server at "127.0.0.1", port 6432 failed: server closed the connection unexpectedly
pgbench: error: could not create connection for setup
`
	tests := []struct {
		name string
		out  string
		err  error
		want pgbenchConnRun
	}{
		{"ok", ok, nil, pgbenchConnRun{conns: 198, perSec: 19.812345, connMs: 6.524}},
		{"aborted", aborted, errors.New("exit status 2"), pgbenchConnRun{conns: 57, perSec: 5.7, connMs: 9, aborted: 1}},
	}
	for _, tt := range tests {
		if got := parsePgbenchConnect(tt.out, tt.err); got != tt.want {
			t.Errorf("%s: got %+v, want %+v", tt.name, got, tt.want)
		}
	}
	got := parsePgbenchConnect(setup, errors.New("exit status 1"))
	if want := `measured nothing, its first connection failed: connection to server at "127.0.0.1", port 6432 failed: server closed the connection unexpectedly (exit status 1)`; got.conns != 0 || got.err != want {
		t.Errorf("setup failure: got %+v, want no connections and the reason on one line", got)
	}
}

// floodRows makes the no-flood and stranger rows of a flood run.
func floodRows(sgOK int, sgP99 float64) []Row {
	tr := func(name, role string, ok int, p99, cpu float64, rss int64) TargetResult {
		f := &FloodFigures{Attempts: 20, OK: ok, CPUPercent: cpu, OpensPerS: 1000, LogBytes: int64(cpu) << 10}
		return TargetResult{Target: name, Role: role, Median: Sample{Value: 100 * float64(ok) / 20, P50ms: p99 / 2, P99ms: p99, PeakRSS: rss, Flood: f}}
	}
	rows := []Row{
		{Name: "flood-none", Kind: rowKindFlood, HigherIsBetter: true, Targets: []TargetResult{
			tr(targetStunnel, rolePeer, 20, 20, 5, 10<<20),
			tr(targetSpacegate, roleSubject, 20, 10, 4, 20<<20),
		}},
		{Name: "flood-stranger", Kind: rowKindFlood, HigherIsBetter: true, Targets: []TargetResult{
			tr(targetStunnel, rolePeer, 20, 40, 30, 60<<20),
			tr(targetSpacegate, roleSubject, sgOK, sgP99, 80, 40<<20),
		}},
	}
	for i := range rows {
		compare(&rows[i])
	}
	compareFlood(rows)
	return rows
}

func TestFloodHeadlines(t *testing.T) {
	rows := floodRows(3, 25)
	sg := findTarget(&rows[1], targetSpacegate)
	if sg.P99VsNoFlood != 2.5 || sg.P50VsNoFlood != 2.5 {
		t.Errorf("spacegate p99 vs no flood %v, p50 %v; want 2.5 each", sg.P99VsNoFlood, sg.P50VsNoFlood)
	}
	if st := findTarget(&rows[1], targetStunnel); st.P99VsNoFlood != 2 {
		t.Errorf("stunnel p99 vs no flood %v, want 2", st.P99VsNoFlood)
	}
	hs := floodHeadlines(map[string]*Row{"flood-none": &rows[0], "flood-stranger": &rows[1]})
	byWhat := make(map[string]Headline)
	for _, h := range hs {
		if h.Issue != 12 {
			t.Errorf("headline %q: issue %d, want 12", h.What, h.Issue)
		}
		_, what, _ := strings.Cut(h.What, ": ")
		byWhat[what] = h
	}
	okH := byWhat["psql attempts that got in"]
	if okH.Ratio != 0.15 || okH.Met || !strings.Contains(okH.Detail, "spacegate 3 of 20; stunnel 20") {
		t.Errorf("success headline %+v, want 0.15, not met, naming both", okH)
	}
	p99 := byWhat["psql connect p99 vs no flood (lower is better)"]
	if p99.Ratio != 2.5 || !p99.Met || p99.Goal != 3 {
		t.Errorf("p99 headline %+v, want 2.5 against a goal of 3, met", p99)
	}
	if cpu := byWhat["proxy CPU vs no flood (lower is better)"]; cpu.Ratio != 20 {
		t.Errorf("CPU headline %+v, want 80%% / 4%% = 20", cpu)
	}
	if logs := byWhat["proxy log written vs no flood (lower is better)"]; logs.Ratio != 20 || logs.Detail != "spacegate 80.0 KiB vs 4.00 KiB without a flood" {
		t.Errorf("log headline %+v, want 80 KiB / 4 KiB = 20", logs)
	}
	if peer := byWhat["psql attempts that got in vs best peer"]; peer.Ratio != 0.15 {
		t.Errorf("vs best peer headline %+v, want 0.15", peer)
	}

	// Every attempt in and p99 within 3x: both targets met.
	rows = floodRows(20, 29)
	for _, h := range floodHeadlines(map[string]*Row{"flood-none": &rows[0], "flood-stranger": &rows[1]}) {
		if h.Goal > 0 && !h.Met {
			t.Errorf("headline %+v not met, want met", h)
		}
	}
	// No attempt in: no p99, and the target is not met.
	rows = floodRows(0, 0)
	for _, h := range floodHeadlines(map[string]*Row{"flood-none": &rows[0], "flood-stranger": &rows[1]}) {
		if h.Goal > 0 && h.Met {
			t.Errorf("headline %+v met with no attempt in", h)
		}
	}
}

func TestWriteFloodMarkdown(t *testing.T) {
	rows := floodRows(3, 25)
	rows[1].Targets[1].Median.Flood.Errors = []string{"connection to server failed: server closed the connection unexpectedly"}
	res := &Results{Rows: rows, Settings: Settings{FloodSockets: 2000, FloodTries: 20}}
	res.Headlines = headlines(rows)
	var b strings.Builder
	writeMarkdown(&b, res)
	md := b.String()
	for _, want := range []string{
		"## Issue 12 targets",
		"| **spacegate** | 3/20 (15.0%) |",
		"server closed the connection unexpectedly",
		"2000 idle sockets from 127.0.0.2",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "## Issue 6 targets") {
		t.Errorf("markdown has an issue 6 table without issue 6 rows:\n%s", md)
	}
	var svg strings.Builder
	if err := writeSVG(&svg, res); err != nil || !strings.Contains(svg.String(), "% of a core") {
		t.Errorf("SVG of flood rows: %v, no CPU axis in percent of a core", err)
	}
}

func TestParseFloodFlags(t *testing.T) {
	o, err := parseFlags([]string{"-only", "flood", "-save", "flood-after"}, io.Discard)
	if err != nil || o.save != "flood-after" || o.floodSockets != 2000 || o.floodAttempts != 20 || o.floodEvery != 500*time.Millisecond {
		t.Errorf("defaults: %+v, %v; want 2000 sockets, 20 attempts every 500ms, saved as flood-after", o, err)
	}
	if o, err := parseFlags([]string{"-quick"}, io.Discard); err != nil || o.floodSockets != 500 || o.floodAttempts != 8 {
		t.Errorf("-quick: %d sockets, %d attempts, %v; want 500 and 8", o.floodSockets, o.floodAttempts, err)
	}
	for _, args := range [][]string{
		{"-save", "../latest"},
		{"-save", "x.json"},
		{"-flood-sockets", "0"},
		{"-flood-sockets", "100000"},
		{"-flood-attempts", "0"},
		{"-flood-every", "1ms"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) accepted, want an error", args)
		}
	}
}

// TestQuickFlood runs the flood scenario in -quick mode (500 sockets, 8
// attempts) against every proxy. Like TestQuickRun it needs the Debian
// packages and a few minutes, so it runs only when SPACEGATE_BENCH=1.
func TestQuickFlood(t *testing.T) {
	if os.Getenv("SPACEGATE_BENCH") != "1" {
		t.Skip("set SPACEGATE_BENCH=1 to run the load-test harness (see bench/README.md)")
	}
	out := t.TempDir()
	o, err := parseFlags([]string{"-quick", "-only", "flood", "-out", out, "-save", "flood-quick", "-timeout", "8m"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if err := run(ctx, o, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	b, err := os.ReadFile(filepath.Join(out, "flood-quick.json"))
	if err != nil {
		t.Fatal(err)
	}
	var res Results
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("flood-quick.json: %v", err)
	}
	rows := make(map[string]*Row)
	for i := range res.Rows {
		rows[res.Rows[i].Name] = &res.Rows[i]
	}
	for _, name := range []string{"flood-none", "flood-stranger", "flood-nat", "flood-hello"} {
		row := rows[name]
		if row == nil || len(row.Targets) != 4 {
			t.Fatalf("row %s: %+v, want one with spacegate and the three peers", name, row)
		}
		for _, tr := range row.Targets {
			f := tr.Median.Flood
			if tr.Median.Err != "" || f == nil || f.Attempts != 8 || tr.Median.PeakRSS <= 0 || f.CPUPercent <= 0 {
				t.Errorf("%s, %s: median %+v, flood %+v; want 8 attempts, the proxy's CPU and RSS", name, tr.Target, tr.Median, f)
				continue
			}
			switch {
			case name == "flood-none" && f.OK != f.Attempts:
				// Without a flood every proxy lets every attempt in.
				t.Errorf("%s, %s: %d of %d psql attempts got in (%q), want all", name, tr.Target, f.OK, f.Attempts, f.Errors)
			case name != "flood-none" && f.Held <= 0 && f.OpensPerS <= 0:
				t.Errorf("%s, %s: the flood held no socket and opened none", name, tr.Target)
			}
		}
	}
	// The gate does the TLS handshake a ClientHello asks for.
	if sg := findTarget(rows["flood-hello"], targetSpacegate); sg == nil || sg.Median.Flood.HandshakesPerS <= 0 {
		t.Errorf("flood-hello: spacegate %+v, want handshakes counted", sg)
	}
	if !strings.Contains(stdout.String(), "## Issue 12 targets") {
		t.Errorf("stdout has no issue 12 table:\n%s", stdout.String())
	}
}
