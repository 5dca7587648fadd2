package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spacegate/spacegate/internal/testenv"
)

// The flood scenario's phases, the keys of its rows.
const (
	phaseNone     = "none"     // no flood: the baseline
	phaseStranger = "stranger" // idle sockets from an address no rule allows
	phaseNAT      = "nat"      // idle sockets from the real client's own address
	phaseHello    = "hello"    // ClientHellos from an address no rule allows
)

// Addresses of the flood. Every target listens on 127.0.0.1 and the real
// client connects from it; spacegate's rules allow 127.0.0.1/32 only.
var (
	strangerAddr = netip.MustParseAddr("127.0.0.2")
	clientAddr   = netip.MustParseAddr("127.0.0.1")
)

const (
	// helloLoops is how many ClientHello connections the hello phase
	// keeps going at once.
	helloLoops = 16
	// floodRamp bounds the wait for the flood to open its sockets once
	// before the real client starts.
	floodRamp = 5 * time.Second
	// psqlTimeout bounds one psql attempt; libpq's connect_timeout is
	// one second less.
	psqlTimeout = 6 * time.Second
	// pgbenchRate and pgbenchClients make the pgbench -C run: a steady
	// trickle of new connections rather than a load of its own, so that
	// the proxy's CPU figure is the flood's.
	pgbenchRate    = 20
	pgbenchClients = 2
	// upTimeout bounds the wait for a restarted proxy to let psql in.
	upTimeout = 20 * time.Second
)

// floodOptions size the flood scenario.
type floodOptions struct {
	sockets  int           // idle flood sockets
	attempts int           // psql attempts per phase
	every    time.Duration // between psql attempts
}

// floodPhases are the rows of the flood scenario, in the order each
// target runs them.
func floodPhases(fo floodOptions) []Row {
	cmd := fmt.Sprintf("%d x psql -c 'SELECT 1' (one every %v, connect_timeout=%d) and pgbench -n -S -C -c %d -R %d -T %d, from 127.0.0.1; proxy restarted before each phase",
		fo.attempts, fo.every, int((psqlTimeout-time.Second)/time.Second), pgbenchClients, pgbenchRate, int(fo.window()/time.Second))
	row := func(name, title, note string) Row {
		return Row{Name: name, Title: title, Unit: "% psql ok", HigherIsBetter: true, Kind: "flood", Command: cmd, Note: note}
	}
	return []Row{
		row("flood-none", "no flood (the baseline)", ""),
		row("flood-stranger", fmt.Sprintf("%d idle sockets from 127.0.0.2, which no rule allows, each reopened as soon as it is closed", fo.sockets),
			"flood sockets send nothing"),
		row("flood-nat", fmt.Sprintf("%d idle sockets from 127.0.0.1, the real client's own address (an office behind one NAT), each reopened as soon as it is closed", fo.sockets),
			"flood sockets send nothing"),
		row("flood-hello", fmt.Sprintf("ClientHello flood from 127.0.0.2: %d loops of SSLRequest, ClientHello, wait for the server's first flight, close", helloLoops),
			"handshakes/s counts the server flights the flood received"),
	}
}

// window is how long the real client's attempts last in one phase.
func (fo floodOptions) window() time.Duration {
	return time.Duration(fo.attempts) * fo.every
}

func floodScenario(name string, fo floodOptions) *scenario {
	rows := floodPhases(fo)
	sc := &scenario{
		name:   name,
		rows:   make(map[string]Row),
		keys:   []string{phaseNone, phaseStranger, phaseNAT, phaseHello},
		rounds: 1,
		// The direct path has no proxy to flood or measure.
		takesPart: func(t *target) bool { return t.svc != nil && t.pgAddr != "" },
		finish:    compareFlood,
	}
	for i, k := range sc.keys {
		sc.rows[k] = rows[i]
	}
	var (
		hello    []byte
		helloErr error
		once     sync.Once
	)
	sc.run = func(ctx context.Context, e *env, t *target) (map[string]Sample, error) {
		once.Do(func() { hello, helloErr = clientHello() })
		if helloErr != nil {
			return nil, helloErr
		}
		out := make(map[string]Sample)
		for _, k := range sc.keys {
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
			s, err := e.floodPhase(ctx, t, k, fo, hello)
			if err != nil {
				s.Err = err.Error()
			}
			out[k] = s
		}
		return out, nil
	}
	return sc
}

// floodPhase restarts the target's proxy, starts the phase's flood, and
// measures the real client (psql attempts and a pgbench -C trickle, at
// once) and the proxy's CPU and memory while the flood goes on.
func (e *env) floodPhase(ctx context.Context, t *target, phase string, fo floodOptions, hello []byte) (Sample, error) {
	var s Sample
	if err := t.svc.restart(ctx); err != nil {
		return s, err
	}
	if err := e.awaitPsql(ctx, t.pgAddr); err != nil {
		return s, fmt.Errorf("%s after restart: %w", t.name, err)
	}
	var f *flood
	want := int64(0)
	switch phase {
	case phaseStranger:
		f, want = startIdleFlood(ctx, t.pgAddr, strangerAddr, fo.sockets), int64(fo.sockets)
	case phaseNAT:
		f, want = startIdleFlood(ctx, t.pgAddr, clientAddr, fo.sockets), int64(fo.sockets)
	case phaseHello:
		f, want = startHelloFlood(ctx, t.pgAddr, strangerAddr, helloLoops, hello), helloLoops
	}
	defer f.stop()
	if f != nil {
		// Let the flood open each socket once before the client comes.
		ramp := time.Now().Add(floodRamp)
		for f.opened.Load() < want && time.Now().Before(ramp) && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
		}
	}

	pid := t.svc.proc.pid()
	if err := resetPeak(pid); err != nil {
		return s, err
	}
	cpu0, err := cpuTime(pid)
	if err != nil {
		return s, err
	}
	log0 := fileSize(t.svc.logPath)
	var opened0, hs0, errs0 int64
	if f != nil {
		opened0, hs0, errs0 = f.opened.Load(), f.handshakes.Load(), f.dialErrs.Load()
	}
	start := time.Now()
	var (
		wg    sync.WaitGroup
		ps    psqlRun
		pb    pgbenchConnRun
		held  []float64
		done  = make(chan struct{})
		count sync.WaitGroup
	)
	if f != nil {
		count.Go(func() {
			tick := time.NewTicker(200 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-done:
					return
				case <-tick.C:
					held = append(held, float64(f.open.Load()))
				}
			}
		})
	}
	wg.Go(func() { ps = e.psqlAttempts(ctx, t.pgAddr, fo) })
	wg.Go(func() { pb = e.pgbenchConnect(ctx, t.pgAddr, fo.window()) })
	wg.Wait()
	close(done)
	count.Wait()
	wall := time.Since(start)
	cpu1, err := cpuTime(pid)
	if err != nil {
		return s, fmt.Errorf("%s during the flood: %w", t.name, err)
	}
	rss, peak, err := memory(pid)
	if err != nil {
		return s, err
	}
	ff := &FloodFigures{
		Attempts: ps.attempts, OK: len(ps.lat), LatMs: slices.Clone(ps.lat), Errors: ps.errors, Load: loadAverage(),
		PgbenchConns: pb.conns, PgbenchConnPerS: pb.perSec, PgbenchConnMs: pb.connMs, PgbenchAborted: pb.aborted, PgbenchErr: pb.err,
		CPUPercent: 100 * (cpu1 - cpu0).Seconds() / wall.Seconds(),
		LogBytes:   fileSize(t.svc.logPath) - log0,
		RSS:        rss,
	}
	if f != nil {
		ff.Held = mean(held)
		ff.OpensPerS = float64(f.opened.Load()-opened0) / wall.Seconds()
		ff.DialErrsPerS = float64(f.dialErrs.Load()-errs0) / wall.Seconds()
		if phase == phaseHello {
			ff.HandshakesPerS = float64(f.handshakes.Load()-hs0) / wall.Seconds()
		}
	}
	slices.Sort(ps.lat)
	s = Sample{Value: 100 * float64(len(ps.lat)) / float64(max(1, ps.attempts)), P50ms: percentile(ps.lat, 50), P99ms: percentile(ps.lat, 99),
		PeakRSS: peak, Ops: int64(ps.attempts), Seconds: wall.Seconds(), Flood: ff}
	return s, nil
}

// fileSize returns the size of a file, or 0 when it cannot be read.
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// loadAverage returns the 1-minute load average, or 0 when /proc does not
// say.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _, _ := strings.Cut(string(b), " ")
	x, _ := strconv.ParseFloat(f, 64)
	return x
}

// mean returns the mean of xs, or 0 when xs is empty.
func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	var sum float64
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
}

// psqlRun is what the psql attempts of one phase found.
type psqlRun struct {
	attempts int
	lat      []float64 // ms of each attempt that succeeded
	errors   []string  // distinct reasons of failed attempts, at most maxErrors
}

// maxErrors bounds the distinct psql errors a phase keeps.
const maxErrors = 3

// psqlConnInfo is the libpq connection string of the real client.
func (e *env) psqlConnInfo(addr string) string {
	return fmt.Sprintf("%s connect_timeout=%d", e.connInfo(addr), int((psqlTimeout-time.Second)/time.Second))
}

// psqlOnce runs psql -c 'SELECT 1' once and returns its wall time, or why
// it failed (the first line psql printed).
func (e *env) psqlOnce(ctx context.Context, addr string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, psqlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.tools["psql"], "-X", "-A", "-t", "-c", "SELECT 1", e.psqlConnInfo(addr))
	cmd.Env = testenv.EnvWithoutPG()
	start := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(start)
	if err == nil && strings.TrimSpace(string(out)) == "1" {
		return d, nil
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	if ctx.Err() != nil {
		line = fmt.Sprintf("no answer within %v", psqlTimeout)
	} else if line == "" {
		line = fmt.Sprint(err)
	}
	return d, errors.New(strings.TrimPrefix(line, "psql: "))
}

// awaitPsql waits until psql gets in through addr, at most upTimeout; the
// first connection also builds whatever the proxy makes lazily.
func (e *env) awaitPsql(ctx context.Context, addr string) error {
	deadline := time.Now().Add(upTimeout)
	for {
		_, err := e.psqlOnce(ctx, addr)
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// psqlAttempts runs fo.attempts psql connections to addr, one every
// fo.every (or at once when the previous one overran), and stops starting
// them once the window and a grace of psqlTimeout*3 have passed, so a
// hanging proxy cannot stretch the phase; attempts never started count as
// failed.
func (e *env) psqlAttempts(ctx context.Context, addr string, fo floodOptions) psqlRun {
	r := psqlRun{attempts: fo.attempts}
	start := time.Now()
	stopAt := start.Add(fo.window() + 3*psqlTimeout)
	for i := range fo.attempts {
		next := start.Add(time.Duration(i) * fo.every)
		if d := time.Until(next); d > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
		}
		if ctx.Err() != nil || time.Now().After(stopAt) {
			r.addError(fmt.Sprintf("%d attempts not started: earlier ones took the phase's time", fo.attempts-i))
			break
		}
		d, err := e.psqlOnce(ctx, addr)
		if err != nil {
			r.addError(err.Error())
			continue
		}
		r.lat = append(r.lat, float64(d.Microseconds())/1000)
	}
	return r
}

func (r *psqlRun) addError(msg string) {
	if len(r.errors) < maxErrors && !slices.Contains(r.errors, msg) {
		r.errors = append(r.errors, msg)
	}
}

// pgbenchConnRun is what one pgbench -C run found.
type pgbenchConnRun struct {
	conns   int64
	perSec  float64
	connMs  float64 // pgbench's average connection time
	aborted int     // clients pgbench gave up on after a failed connection
	err     string  // why pgbench failed before measuring, if it did
}

var (
	connTimeRe = regexp.MustCompile(`(?m)^average connection time = ([0-9.]+) ms`)
	abortedRe  = regexp.MustCompile(`(?m)client \d+ aborted`)
)

// pgbenchConnect runs pgbench -C at a steady rate of new connections for
// dur. A failed connection aborts its pgbench client, so the aborted
// count and the connections made are the figures; pgbench's exit status
// 2 (some clients aborted) is not an error here.
func (e *env) pgbenchConnect(ctx context.Context, addr string, dur time.Duration) pgbenchConnRun {
	args := []string{"-n", "-S", "-C", "-c", strconv.Itoa(pgbenchClients), "-j", strconv.Itoa(pgbenchClients),
		"-R", strconv.Itoa(pgbenchRate), "-T", strconv.Itoa(max(1, int(dur/time.Second))), e.psqlConnInfo(addr)}
	ctx, cancel := context.WithTimeout(ctx, dur+time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.tools["pgbench"], args...)
	cmd.Env = testenv.EnvWithoutPG()
	out, err := cmd.CombinedOutput()
	return parsePgbenchConnect(string(out), err)
}

// parsePgbenchConnect reads the output of a pgbench -C run that ended
// with err.
func parsePgbenchConnect(out string, err error) pgbenchConnRun {
	var r pgbenchConnRun
	r.aborted = len(abortedRe.FindAllString(out, -1))
	n := txnsRe.FindStringSubmatch(out)
	if n == nil {
		// The first error line says why; libpq's explanations follow it
		// on lines of their own.
		why := lastLines(out, 1)
		for line := range strings.Lines(out) {
			if _, e, ok := strings.Cut(line, "error: "); ok {
				why = strings.TrimSpace(e)
				break
			}
		}
		r.err = "measured nothing: " + why
		if strings.Contains(out, "could not create connection for setup") {
			r.err = "measured nothing, its first connection failed: " + why
		}
		if err != nil {
			r.err += fmt.Sprintf(" (%v)", err)
		}
		return r
	}
	r.conns, _ = strconv.ParseInt(n[1], 10, 64)
	if m := tpsRe.FindStringSubmatch(out); m != nil {
		r.perSec, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := connTimeRe.FindStringSubmatch(out); m != nil {
		r.connMs, _ = strconv.ParseFloat(m[1], 64)
	}
	return r
}
