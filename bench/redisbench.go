package main

import (
	"context"
	"encoding/csv"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// redisResult is one test's line of redis-benchmark --csv.
type redisResult struct {
	rps, p50, p99 float64
}

// redisBenchmark runs redis-benchmark with TLS and the client bundle
// against addr: tests (such as "get,set"), n requests each, and extra
// arguments (-c, -P, -k). It returns each test's result by its upper-case
// name. redis-benchmark spins forever when it cannot connect, so it runs
// under timeout(1) as well as a context.
func (e *env) redisBenchmark(ctx context.Context, addr, tests string, n int, extra []string, limit time.Duration) (map[string]redisResult, float64, error) {
	host, port := splitAddr(addr)
	secs := strconv.Itoa(int(limit / time.Second))
	args := []string{"-k", "5", secs, e.tools["redis-benchmark"],
		"--tls", "--cert", e.client.cert, "--key", e.client.key, "--cacert", e.client.rootCA,
		"-h", host, "-p", port, "-t", tests, "-n", strconv.Itoa(n), "-q", "--csv"}
	args = append(args, extra...)
	ctx, cancel := context.WithTimeout(ctx, limit+10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.tools["timeout"], args...)
	start := time.Now()
	out, err := cmd.Output()
	elapsed := time.Since(start).Seconds()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		return nil, elapsed, fmt.Errorf("redis-benchmark %s: %w; output ends:\n%s", strings.Join(args[3:], " "), err, lastLines(string(out)+stderr, 6))
	}
	rows, err := csv.NewReader(strings.NewReader(string(out))).ReadAll()
	if err != nil {
		return nil, elapsed, fmt.Errorf("parsing redis-benchmark CSV: %w; output:\n%s", err, lastLines(string(out), 6))
	}
	res := make(map[string]redisResult)
	for _, r := range rows {
		// test, rps, avg, min, p50, p95, p99, max
		if len(r) < 7 || r[0] == "test" {
			continue
		}
		var v [3]float64
		for i, col := range []int{1, 4, 6} {
			if v[i], err = strconv.ParseFloat(r[col], 64); err != nil {
				return nil, elapsed, fmt.Errorf("parsing redis-benchmark CSV line %q: %w", strings.Join(r, ","), err)
			}
		}
		res[r[0]] = redisResult{rps: v[0], p50: v[1], p99: v[2]}
	}
	for _, t := range strings.Split(tests, ",") {
		if _, ok := res[strings.ToUpper(t)]; !ok {
			return nil, elapsed, fmt.Errorf("redis-benchmark printed no %s result; output:\n%s", strings.ToUpper(t), lastLines(string(out), 6))
		}
	}
	return res, elapsed, nil
}
