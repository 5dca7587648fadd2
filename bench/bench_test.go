package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestQuickRun runs the whole harness in -quick mode on one scenario. It
// needs the Debian packages and a minute, so it runs only when
// SPACEGATE_BENCH=1.
func TestQuickRun(t *testing.T) {
	if os.Getenv("SPACEGATE_BENCH") != "1" {
		t.Skip("set SPACEGATE_BENCH=1 to run the load-test harness (see bench/README.md)")
	}
	out := t.TempDir()
	o, err := parseFlags([]string{"-quick", "-only", "pg-select-8", "-out", out, "-timeout", "5m"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if err := run(ctx, o, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "| **spacegate** |") {
		t.Errorf("stdout has no spacegate row:\n%s", stdout.String())
	}
	b, err := os.ReadFile(filepath.Join(out, "partial.json"))
	if err != nil {
		t.Fatal(err)
	}
	var res Results
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("partial.json: %v", err)
	}
	if len(res.Rows) != 1 || res.Rows[0].Name != "pg-select-8" {
		t.Fatalf("rows = %+v, expected only pg-select-8", res.Rows)
	}
	for _, tr := range res.Rows[0].Targets {
		m := tr.Median
		if m.Err != "" || m.Value <= 0 || m.P99ms <= 0 {
			t.Errorf("%s: median %+v, expected a positive TPS and p99 without error (samples %+v)", tr.Target, m, tr.Samples)
		}
		if tr.Role != roleDirect && (m.CPUus <= 0 || m.PeakRSS <= 0) {
			t.Errorf("%s: proxy CPU %v µs/txn and peak RSS %d, expected both positive", tr.Target, m.CPUus, m.PeakRSS)
		}
	}
	for _, ext := range []string{".md", ".svg"} {
		if fi, err := os.Stat(filepath.Join(out, "partial"+ext)); err != nil || fi.Size() == 0 {
			t.Errorf("partial%s: missing or empty (%v)", ext, err)
		}
	}
}

func TestMedianPercentile(t *testing.T) {
	tests := []struct {
		xs       []float64
		med, p99 float64
	}{
		{nil, 0, 0},
		{[]float64{3}, 3, 3},
		{[]float64{1, 2}, 1.5, 2},
		{[]float64{5, 1, 3}, 3, 5},
	}
	for _, tt := range tests {
		if got := median(tt.xs); got != tt.med {
			t.Errorf("median(%v) = %v, want %v", tt.xs, got, tt.med)
		}
		sorted := slices.Sorted(slices.Values(tt.xs))
		if got := percentile(sorted, 99); got != tt.p99 {
			t.Errorf("percentile(%v, 99) = %v, want %v", sorted, got, tt.p99)
		}
	}
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(i + 1)
	}
	for p, want := range map[float64]float64{50: 50, 99: 99, 100: 100, 0.5: 1} {
		if got := percentile(hundred, p); got != want {
			t.Errorf("percentile(1..100, %v) = %v, want %v", p, got, want)
		}
	}
}

func TestSelectScenarios(t *testing.T) {
	tests := []struct {
		only    []string
		want    []string
		wantErr bool
	}{
		{nil, scenarioNames(), false},
		{[]string{"idle-10k", "pg-select-8"}, []string{"pg-select-8", "idle-10k"}, false},
		{[]string{"redis"}, []string{"redis-c50", "redis-p16", "redis-k0"}, false},
		{[]string{"pg-copy", "pg-copy"}, []string{"pg-copy"}, false},
		{[]string{"pg-select"}, []string{"pg-select-8", "pg-select-64"}, false},
		{[]string{"pg-sel"}, nil, true},
		{[]string{"nope"}, nil, true},
	}
	for _, tt := range tests {
		got, err := selectScenarios(tt.only)
		if (err != nil) != tt.wantErr || !slices.Equal(got, tt.want) {
			t.Errorf("selectScenarios(%q) = %q, %v; want %q, error %v", tt.only, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestCPUAndMemoryOfSelf(t *testing.T) {
	pid := os.Getpid()
	before, err := cpuTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	// Spin until the kernel has charged several clock ticks; on a busy
	// machine that may take longer than the CPU time itself.
	start := time.Now()
	var after time.Duration
	for time.Since(start) < 10*time.Second {
		if after, err = cpuTime(pid); err != nil {
			t.Fatal(err)
		}
		if after-before >= 50*time.Millisecond {
			break
		}
	}
	wall := time.Since(start)
	if d := after - before; d < 50*time.Millisecond || d > wall*time.Duration(runtime.NumCPU())+20*time.Millisecond {
		t.Errorf("CPU time grew by %v over %v of spinning, expected at least 50ms and at most the wall time per CPU", d, wall)
	}
	rss, peak, err := memory(pid)
	if err != nil {
		t.Fatal(err)
	}
	if rss <= 0 || peak < rss {
		t.Errorf("memory: rss %d, peak %d; expected 0 < rss <= peak", rss, peak)
	}
}

func TestReadPgbenchLogs(t *testing.T) {
	dir := t.TempDir()
	logs := map[string]string{
		"pgbench_log.123":   "0 0 1500 0 1700000000 1\n1 0 500 0 1700000000 2\n",
		"pgbench_log.123.1": "2 0 failed 0 1700000000 3\n3 0 2500 0 1700000000 4\n",
	}
	for name, data := range logs {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := readPgbenchLogs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := []float64{0.5, 1.5, 2.5}; !slices.Equal(got, want) {
		t.Errorf("latencies = %v, want %v", got, want)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 0 {
		t.Errorf("logs left behind: %v", left)
	}
}

func TestCompareAndHeadlines(t *testing.T) {
	res := func(name, role string, v, cpu float64) TargetResult {
		return TargetResult{Target: name, Role: role, Median: Sample{Value: v, CPUus: cpu}}
	}
	row := Row{Name: "pg-select-8", Unit: "TPS", CPUUnit: "µs/txn", HigherIsBetter: true, Targets: []TargetResult{
		res(targetDirect, roleDirect, 40000, 0),
		res(targetHAProxy, roleFloor, 28000, 20),
		res(targetStunnel, rolePeer, 23000, 32),
		res(targetPgBouncer, rolePeer, 25000, 20),
		res(targetSpacegate, roleSubject, 30000, 15),
	}}
	compare(&row)
	if row.BestPeer != targetPgBouncer {
		t.Errorf("best peer = %q, want pgbouncer", row.BestPeer)
	}
	sg := findTarget(&row, targetSpacegate)
	if sg.VsBestPeer != 1.2 || sg.CPUVsFloor != 0.75 {
		t.Errorf("spacegate vs best peer %v, CPU vs HAProxy %v; want 1.2 and 0.75", sg.VsBestPeer, sg.CPUVsFloor)
	}
	hs := headlines([]Row{row})
	if len(hs) != 3 {
		t.Fatalf("headlines = %+v, want 3 for pg-select-8", hs)
	}
	if hs[0].Ratio != 1.2 || !hs[0].Better || hs[1].Ratio != 0.75 || !hs[1].Better {
		t.Errorf("headlines = %+v, want TPS ratio 1.2 and CPU ratio 0.75, both better", hs)
	}
	// Issue 6's targets: TPS at least 1.15x the best peer, CPU at most
	// HAProxy's.
	if !hs[0].Met || hs[0].Goal != 1.15 || !hs[1].Met || !hs[1].Lower {
		t.Errorf("headlines = %+v, want both targets met", hs)
	}
	row.Targets[4].Median.Value = 27000 // 1.08x PgBouncer: better, not enough
	if hs := headlines([]Row{row}); !hs[0].Better || hs[0].Met {
		t.Errorf("at 1.08x: headline %+v, want better but not met", hs[0])
	}

	idle := Row{Name: "idle-10k", Unit: "KiB/conn", Targets: []TargetResult{
		res(targetStunnel, rolePeer, 135, 0),
		res(targetSpacegate, roleSubject, 75, 0),
	}}
	compare(&idle)
	if got := findTarget(&idle, targetSpacegate).VsBestPeer; got != 75.0/135 {
		t.Errorf("idle vs best peer = %v, want %v", got, 75.0/135)
	}
	// 75 KiB is better than stunnel's 135 and misses the 40 KiB target.
	if hs := headlines([]Row{idle}); len(hs) != 2 || hs[0].Met || !hs[1].Better {
		t.Errorf("idle headlines = %+v, want the 40 KiB target missed and better than stunnel", hs)
	}
}

func TestMaxIdleConns(t *testing.T) {
	tests := []struct {
		limit uint64
		want  int
	}{
		{20000, 9749},     // stunnel's 125/256 is the tighter bound
		{1048576, 511984}, // stunnel again
		{1024, 384},       // two descriptors per connection is tighter
	}
	for _, tt := range tests {
		if got := maxIdleConns(tt.limit); got != tt.want {
			t.Errorf("maxIdleConns(%d) = %d, want %d", tt.limit, got, tt.want)
		}
	}
}
