package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"time"
)

// scenario is one workload, measured for every target that takes part. A
// run may yield several rows, such as GET and SET of one redis-benchmark.
type scenario struct {
	name string
	// rows are the templates of the rows the scenario yields, keyed like
	// the samples run returns.
	rows map[string]Row
	keys []string // the keys of rows in order
	// takesPart reports whether a target has the path the scenario needs.
	takesPart func(*target) bool
	// calibrate, when set, sizes the work from a short run on one target,
	// so that each measured run lasts about the run duration.
	calibrate func(context.Context, *env, *target) error
	run       func(context.Context, *env, *target) (map[string]Sample, error)
	// rounds, when not 0, replaces -rounds for this scenario.
	rounds int
	// finish, when set, fills figures that compare the scenario's rows
	// with one another.
	finish func([]Row)
}

// scenarioNames lists every scenario in the order they run.
func scenarioNames() []string {
	return []string{"pg-select-8", "pg-select-64", "pg-tpcb-8", "pg-tpcb-64", "pg-connect-8",
		"pg-copy", "redis-c50", "redis-p16", "redis-k0", "idle-1k", "idle-10k", "flood"}
}

// selectScenarios returns the names in only (or every scenario when only
// is empty); an entry may name a scenario or a group of them, the part of
// their names before a '-' ("pg", "redis", "idle", "pg-select").
func selectScenarios(only []string) ([]string, error) {
	all := scenarioNames()
	if len(only) == 0 {
		return all, nil
	}
	var out []string
	for _, want := range only {
		found := false
		for _, name := range all {
			if name == want || strings.HasPrefix(name, want+"-") {
				found = true
				if !slices.Contains(out, name) {
					out = append(out, name)
				}
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown scenario %q; expected one of %s, or a group such as pg, redis, idle, pg-select", want, strings.Join(all, ", "))
		}
	}
	// Run in the canonical order whatever order -only gave.
	slices.SortFunc(out, func(a, b string) int { return slices.Index(all, a) - slices.Index(all, b) })
	return out, nil
}

// buildScenario makes the named scenario with the options' sizes.
func buildScenario(name string, o options, fdLimit uint64) *scenario {
	switch name {
	case "pg-select-8":
		return pgbenchScenario(name, "pgbench -S, 8 clients", 8, []string{"-S"}, "TPS", "µs/txn", o)
	case "pg-select-64":
		return pgbenchScenario(name, "pgbench -S, 64 clients", 64, []string{"-S"}, "TPS", "µs/txn", o)
	case "pg-tpcb-8":
		return pgbenchScenario(name, "pgbench TPC-B-like, 8 clients", 8, nil, "TPS", "µs/txn", o)
	case "pg-tpcb-64":
		return pgbenchScenario(name, "pgbench TPC-B-like, 64 clients", 64, nil, "TPS", "µs/txn", o)
	case "pg-connect-8":
		return pgbenchScenario(name, "pgbench -S -C (new TLS connection per transaction), 8 clients", 8, []string{"-S", "-C"}, "conn/s", "µs/conn", o)
	case "pg-copy":
		return copyScenario(name, o)
	case "redis-c50":
		return redisScenario(name, "50 clients", []string{"-c", "50"}, 20000, o)
	case "redis-p16":
		return redisScenario(name, "50 clients, pipeline 16", []string{"-c", "50", "-P", "16"}, 200000, o)
	case "redis-k0":
		return redisScenario(name, "50 clients, reconnect per request (-k 0)", []string{"-c", "50", "-k", "0"}, 1000, o)
	case "idle-1k":
		return idleScenario(name, o.idleConns[0])
	case "idle-10k":
		return idleScenario(name, min(o.idleConns[1], maxIdleConns(fdLimit)))
	case "flood":
		return floodScenario(name, floodOptions{sockets: min(o.floodSockets, maxIdleConns(fdLimit)), attempts: o.floodAttempts, every: o.floodEvery})
	}
	panic("unknown scenario " + name)
}

// maxIdleConns is the most connections every proxy can hold with
// RLIMIT_NOFILE at limit, which none can raise past the hard limit: each
// holds two descriptors per connection, and stunnel refuses clients beyond
// limit*125/256 ("too many clients").
func maxIdleConns(limit uint64) int {
	return int(min((limit-256)/2, limit*125/256-16))
}

func hasPG(t *target) bool    { return t.pgAddr != "" }
func hasRedis(t *target) bool { return t.redisAddr != "" }

// probeDuration is how long a calibration run lasts.
const probeDuration = 2 * time.Second

func pgbenchScenario(name, title string, clients int, extra []string, unit, cpuUnit string, o options) *scenario {
	perClient := 0
	cmd := fmt.Sprintf("pgbench -n %s -c %d -j %d -t N --log", strings.Join(extra, " "), clients, min(2, clients))
	sc := &scenario{
		name:      name,
		keys:      []string{""},
		rows:      map[string]Row{"": {Name: name, Title: title, Unit: unit, HigherIsBetter: true, CPUUnit: cpuUnit, Command: strings.Join(strings.Fields(cmd), " ")}},
		takesPart: hasPG,
	}
	sc.calibrate = func(ctx context.Context, e *env, t *target) error {
		r, err := e.pgbench(ctx, t.pgAddr, clients, extra, 0, probeDuration, "")
		if err != nil || r.txns == 0 {
			// pgbench's -T clock runs while it connects, which with many
			// clients and slow TLS may use it all up; a few transactions
			// per client give a rate without the connection time.
			r, err = e.pgbench(ctx, t.pgAddr, clients, extra, 10, probeDuration, "")
		}
		if err != nil {
			return err
		}
		perClient = max(20, int(r.tps*o.runDur.Seconds()/float64(clients)))
		return nil
	}
	sc.run = func(ctx context.Context, e *env, t *target) (map[string]Sample, error) {
		dir, err := os.MkdirTemp(e.work, "pgbench-log-*")
		if err != nil {
			return nil, fmt.Errorf("creating pgbench log directory: %w", err)
		}
		defer os.RemoveAll(dir)
		p, err := startProbe(t)
		if err != nil {
			return nil, err
		}
		r, err := e.pgbench(ctx, t.pgAddr, clients, extra, perClient, o.runDur, dir)
		if err != nil {
			return nil, err
		}
		s := Sample{Value: r.tps, Ops: r.txns, Seconds: r.seconds, P50ms: percentile(r.lat, 50), P99ms: percentile(r.lat, 99)}
		if err := p.finish(&s, float64(r.txns)); err != nil {
			return nil, err
		}
		return map[string]Sample{"": s}, nil
	}
	return sc
}

func copyScenario(name string, o options) *scenario {
	return &scenario{
		name: name,
		keys: []string{""},
		rows: map[string]Row{"": {Name: name, Title: fmt.Sprintf("bulk COPY out, %d MiB", o.copyMiB), Unit: "MiB/s",
			HigherIsBetter: true, CPUUnit: "µs/MiB",
			Command: fmt.Sprintf("COPY (SELECT repeat('x', 1023) FROM generate_series(1, %d)) TO STDOUT, via pgx", int64(o.copyMiB)<<20/copyRowBytes)}},
		takesPart: hasPG,
		run: func(ctx context.Context, e *env, t *target) (map[string]Sample, error) {
			p, err := startProbe(t)
			if err != nil {
				return nil, err
			}
			n, secs, err := e.copyOut(ctx, t.pgAddr, o.copyMiB)
			if err != nil {
				return nil, err
			}
			mib := float64(n) / (1 << 20)
			s := Sample{Value: mib / secs, Ops: n, Seconds: secs}
			if err := p.finish(&s, mib); err != nil {
				return nil, err
			}
			return map[string]Sample{"": s}, nil
		},
	}
}

func redisScenario(name, title string, extra []string, probeN int, o options) *scenario {
	n := 0
	suffix := strings.TrimPrefix(name, "redis-")
	cmdArgs := "redis-benchmark --tls -t get,set -n N -q --csv " + strings.Join(extra, " ")
	sc := &scenario{
		name: name,
		keys: []string{"GET", "SET"},
		rows: map[string]Row{
			"GET": {Name: "redis-get-" + suffix, Title: "redis-benchmark GET, " + title, Unit: "ops/s", HigherIsBetter: true, CPUUnit: "µs/op", Command: cmdArgs},
			"SET": {Name: "redis-set-" + suffix, Title: "redis-benchmark SET, " + title, Unit: "ops/s", HigherIsBetter: true, CPUUnit: "µs/op", Command: cmdArgs,
				Note: "proxy CPU and peak RSS are measured over the GET and SET runs together"},
		},
		takesPart: hasRedis,
	}
	if o.quick {
		probeN = max(200, probeN/4)
	}
	sc.calibrate = func(ctx context.Context, e *env, t *target) error {
		res, _, err := e.redisBenchmark(ctx, t.redisAddr, "get", probeN, extra, time.Minute)
		if err != nil {
			return err
		}
		// GET and SET each do n requests.
		n = max(500, int(res["GET"].rps*o.runDur.Seconds()/2))
		return nil
	}
	sc.run = func(ctx context.Context, e *env, t *target) (map[string]Sample, error) {
		p, err := startProbe(t)
		if err != nil {
			return nil, err
		}
		res, secs, err := e.redisBenchmark(ctx, t.redisAddr, "get,set", n, extra, 2*time.Minute+10*o.runDur)
		if err != nil {
			return nil, err
		}
		// Both samples share the CPU and memory of the whole run.
		var shared Sample
		if err := p.finish(&shared, float64(2*n)); err != nil {
			return nil, err
		}
		out := make(map[string]Sample)
		for _, k := range sc.keys {
			r := res[k]
			out[k] = Sample{Value: r.rps, P50ms: r.p50, P99ms: r.p99, CPUus: shared.CPUus, PeakRSS: shared.PeakRSS, Ops: int64(n), Seconds: secs}
		}
		return out, nil
	}
	return sc
}

func idleScenario(name string, n int) *scenario {
	return &scenario{
		name: name,
		keys: []string{""},
		rows: map[string]Row{"": {Name: name, Title: fmt.Sprintf("%d idle TLS connections (Redis route), proxy RSS per connection", n),
			Unit: "KiB/conn", CPUUnit: "µs/conn",
			Command: fmt.Sprintf("Go TLS client: %d connections, PING on each, held open; proxy restarted before each round", n),
			Note:    "proxy CPU is per connection opened (handshake and splice set-up); peak RSS is the proxy's VmHWM with every connection open"}},
		takesPart: func(t *target) bool { return t.svc != nil && t.redisAddr != "" },
		run: func(ctx context.Context, e *env, t *target) (map[string]Sample, error) {
			s, err := e.idle(ctx, t, n)
			if err != nil {
				return nil, err
			}
			return map[string]Sample{"": s}, nil
		},
	}
}

// runScenarios runs each scenario for every target taking part, rounds
// times, rotating the order of targets each round. It stops early, keeping
// what it has, when ctx ends.
func runScenarios(ctx context.Context, e *env, names []string, o options, prog *progress) []Row {
	var scs []*scenario
	total := 0
	for _, name := range names {
		sc := buildScenario(name, o, e.fdLimit)
		scs = append(scs, sc)
		n := 0
		for _, t := range e.targets {
			if sc.takesPart(t) {
				n++
			}
		}
		total += n * sc.roundsOf(o)
		if sc.calibrate != nil {
			total++
		}
	}
	prog.total = total
	var rows []Row
	for _, sc := range scs {
		rows = append(rows, runScenario(ctx, e, sc, o, prog)...)
		if ctx.Err() != nil {
			break
		}
	}
	return rows
}

func runScenario(ctx context.Context, e *env, sc *scenario, o options, prog *progress) []Row {
	var targets []*target
	for _, t := range e.targets {
		if sc.takesPart(t) {
			targets = append(targets, t)
		}
	}
	samples := make(map[string]map[string][]Sample) // key, target
	for _, k := range sc.keys {
		samples[k] = make(map[string][]Sample)
	}
	var calibErr error
	if sc.calibrate != nil {
		// Calibrate on spacegate: it is the target that must be there, and
		// the probe warms it.
		cal := targets[len(targets)-1]
		for _, t := range targets {
			if t.role == roleSubject {
				cal = t
			}
		}
		prog.step("%s: calibrating on %s", sc.name, cal.name)
		calibErr = sc.calibrate(ctx, e, cal)
	}
	rounds := sc.roundsOf(o)
	for round := range rounds {
		for i := range targets {
			if ctx.Err() != nil {
				break
			}
			t := targets[(i+round)%len(targets)]
			prog.step("%s: round %d/%d, %s", sc.name, round+1, rounds, t.name)
			var got map[string]Sample
			err := calibErr
			if err == nil {
				got, err = sc.run(ctx, e, t)
			}
			if err != nil {
				prog.logf("%s, %s, round %d: %v", sc.name, t.name, round+1, err)
			}
			for _, k := range sc.keys {
				s := got[k]
				s.Round = round + 1
				if err != nil {
					s.Err = err.Error()
				}
				samples[k][t.name] = append(samples[k][t.name], s)
			}
		}
	}
	var rows []Row
	for _, k := range sc.keys {
		row := sc.rows[k]
		for _, t := range targets {
			row.Targets = append(row.Targets, summarize(t, samples[k][t.name]))
		}
		compare(&row)
		rows = append(rows, row)
	}
	if sc.finish != nil {
		sc.finish(rows)
	}
	return rows
}

// roundsOf is how many rounds the scenario runs with options o.
func (sc *scenario) roundsOf(o options) int {
	if sc.rounds > 0 {
		return sc.rounds
	}
	return o.rounds
}

// summarize takes the median of every field over the good samples.
func summarize(t *target, samples []Sample) TargetResult {
	r := TargetResult{Target: t.name, Role: t.role, Samples: samples}
	var val, p50, p99, cpu, rss, ops, secs []float64
	for _, s := range samples {
		if s.Err != "" {
			continue
		}
		val = append(val, s.Value)
		p50 = append(p50, s.P50ms)
		p99 = append(p99, s.P99ms)
		cpu = append(cpu, s.CPUus)
		rss = append(rss, float64(s.PeakRSS))
		ops = append(ops, float64(s.Ops))
		secs = append(secs, s.Seconds)
	}
	if len(val) == 0 {
		r.Median.Err = "every run failed"
		return r
	}
	r.Median = Sample{Value: median(val), P50ms: median(p50), P99ms: median(p99), CPUus: median(cpu),
		PeakRSS: int64(median(rss)), Ops: int64(median(ops)), Seconds: median(secs), Flood: summarizeFlood(samples)}
	r.Min, r.Max = slices.Min(val), slices.Max(val)
	return r
}

// compare fills the ratios of every target of row to the best peer and to
// HAProxy.
func compare(row *Row) {
	best := math.NaN()
	for _, t := range row.Targets {
		if t.Role != rolePeer || t.Median.Err != "" {
			continue
		}
		if math.IsNaN(best) || (row.HigherIsBetter && t.Median.Value > best) || (!row.HigherIsBetter && t.Median.Value < best) {
			best, row.BestPeer = t.Median.Value, t.Target
		}
	}
	var floorCPU float64
	for _, t := range row.Targets {
		if t.Target == targetHAProxy && t.Median.Err == "" {
			floorCPU = t.Median.CPUus
		}
	}
	for i := range row.Targets {
		t := &row.Targets[i]
		if t.Median.Err != "" {
			continue
		}
		if !math.IsNaN(best) && best != 0 {
			t.VsBestPeer = t.Median.Value / best
		}
		if floorCPU > 0 && t.Median.CPUus > 0 {
			t.CPUVsFloor = t.Median.CPUus / floorCPU
		}
	}
}
