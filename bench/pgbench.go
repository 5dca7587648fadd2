package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spacegate/spacegate/internal/testenv"
)

// pgbenchRun is what one pgbench run found.
type pgbenchRun struct {
	tps     float64
	txns    int64
	lat     []float64 // per-transaction latencies in ms, sorted; nil without a log
	seconds float64
}

var (
	tpsRe  = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	txnsRe = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
)

// pgbench runs pgbench against addr with the given clients and extra
// arguments (-S, -C), either a fixed perClient transactions per client or,
// when perClient is 0, for dur. With logDir it logs every transaction
// there and returns the latencies.
func (e *env) pgbench(ctx context.Context, addr string, clients int, extra []string, perClient int, dur time.Duration, logDir string) (pgbenchRun, error) {
	args := []string{"-n", "-c", strconv.Itoa(clients), "-j", strconv.Itoa(min(2, clients))}
	args = append(args, extra...)
	limit := 2*time.Minute + 10*dur
	if perClient > 0 {
		args = append(args, "-t", strconv.Itoa(perClient))
	} else {
		args = append(args, "-T", strconv.Itoa(max(1, int(dur.Round(time.Second)/time.Second))))
	}
	if logDir != "" {
		args = append(args, "--log", "--log-prefix="+filepath.Join(logDir, "pgbench_log"))
	}
	args = append(args, e.connInfo(addr))
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.tools["pgbench"], args...)
	cmd.Env = testenv.EnvWithoutPG()
	start := time.Now()
	out, err := cmd.CombinedOutput()
	run := pgbenchRun{seconds: time.Since(start).Seconds()}
	if err != nil {
		return run, fmt.Errorf("pgbench %s: %w; output ends:\n%s", strings.Join(args[:len(args)-1], " "), err, lastLines(string(out), 8))
	}
	n := txnsRe.FindSubmatch(out)
	if n != nil && string(n[1]) == "0" {
		// pgbench prints no tps line when nothing was done.
		return run, nil
	}
	m := tpsRe.FindSubmatch(out)
	if m == nil || n == nil {
		return run, fmt.Errorf("pgbench printed no tps or transaction count; output ends:\n%s", lastLines(string(out), 8))
	}
	run.tps, _ = strconv.ParseFloat(string(m[1]), 64)
	run.txns, _ = strconv.ParseInt(string(n[1]), 10, 64)
	if logDir != "" {
		if run.lat, err = readPgbenchLogs(logDir); err != nil {
			return run, err
		}
	}
	return run, nil
}

// readPgbenchLogs reads the per-transaction logs pgbench wrote into dir,
// returns the latencies in ms, sorted, and removes the logs.
func readPgbenchLogs(dir string) ([]float64, error) {
	files, err := filepath.Glob(filepath.Join(dir, "pgbench_log.*"))
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("reading pgbench logs in %s: none found (%v)", dir, err)
	}
	var lat []float64
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("reading pgbench log: %w", err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// client_id transaction_no time script_no time_epoch time_us;
			// time is the latency in microseconds, or "failed"/"skipped".
			fields := strings.Fields(sc.Text())
			if len(fields) < 3 {
				continue
			}
			us, err := strconv.ParseFloat(fields[2], 64)
			if err != nil {
				continue
			}
			lat = append(lat, us/1000)
		}
		err = sc.Err()
		f.Close()
		os.Remove(name)
		if err != nil {
			return nil, fmt.Errorf("reading pgbench log %s: %w", name, err)
		}
	}
	slices.Sort(lat)
	return lat, nil
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
