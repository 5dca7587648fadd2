package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the harness's settings, from flags.
type options struct {
	rounds    int
	runDur    time.Duration
	quick     bool
	only      []string
	out       string // results directory; "" is bench/results in the module
	spacegate string // prebuilt binary; "" builds one
	copyMiB   int
	idleConns []int // the "1k" and "10k" sizes
	keep      bool
	timeout   time.Duration
	render    string // results JSON to render again instead of measuring
	save      string // base name of the result files; "" is latest or partial
	// The flood scenario: idle sockets, psql attempts and their spacing.
	floodSockets  int
	floodAttempts int
	floodEvery    time.Duration
}

func main() {
	o, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.render != "" {
		err = render(o.render, os.Stdout)
	} else {
		err = run(ctx, o, os.Stdout, os.Stderr)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// parseFlags reads the command line; errors are printed to stderr by the
// flag package.
func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: go run ./bench [flags]\n\nscenarios: %s\n(or groups: pg, redis, idle)\n\nflags:\n", strings.Join(scenarioNames(), ", "))
		fs.PrintDefaults()
	}
	var o options
	var only, idle string
	fs.IntVar(&o.rounds, "rounds", 3, "rounds of every target per scenario, interleaved")
	fs.DurationVar(&o.runDur, "run", 4*time.Second, "about how long one measured run lasts")
	fs.BoolVar(&o.quick, "quick", false, "smoke run: 1 round, 1s runs, 64 MiB COPY, 200 and 1000 idle connections")
	fs.StringVar(&only, "only", "", "comma-separated scenarios or groups to run (default all)")
	fs.StringVar(&o.out, "out", "", "directory for results (default bench/results in the checkout)")
	fs.StringVar(&o.spacegate, "spacegate", "", "use this spacegate binary instead of building ./cmd/spacegate")
	fs.IntVar(&o.copyMiB, "copy-mib", 1024, "size of the bulk COPY in MiB")
	fs.StringVar(&idle, "idle", "1000,10000", "sizes of the two idle scenarios (idle-1k, idle-10k)")
	fs.BoolVar(&o.keep, "keep", false, "keep the work directory (configs and logs of every process)")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Minute, "stop measuring after this long and report what was measured")
	fs.StringVar(&o.render, "render", "", "measure nothing: read this results JSON and write its .md and .svg again beside it")
	fs.StringVar(&o.save, "save", "", "write the results as NAME.{md,json,svg} (default latest, or partial for -quick and -only)")
	fs.IntVar(&o.floodSockets, "flood-sockets", 2000, "flood: idle sockets held by the flooding address")
	fs.IntVar(&o.floodAttempts, "flood-attempts", 20, "flood: psql attempts per phase and target")
	fs.DurationVar(&o.floodEvery, "flood-every", 500*time.Millisecond, "flood: time between psql attempts")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "bench: unexpected arguments %q\n", fs.Args())
		fs.Usage()
		return o, errors.New("unexpected arguments")
	}
	if only != "" {
		o.only = strings.Split(only, ",")
	}
	for _, f := range strings.Split(idle, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			fmt.Fprintf(stderr, "bench: -idle %q: expected two positive counts such as 1000,10000\n", idle)
			return o, errors.New("bad -idle")
		}
		o.idleConns = append(o.idleConns, n)
	}
	if len(o.idleConns) != 2 {
		fmt.Fprintf(stderr, "bench: -idle %q: expected two counts such as 1000,10000\n", idle)
		return o, errors.New("bad -idle")
	}
	if o.quick {
		o.rounds, o.runDur, o.copyMiB = 1, time.Second, min(o.copyMiB, 64)
		if idle == "1000,10000" {
			o.idleConns = []int{200, 1000}
		}
		o.floodSockets, o.floodAttempts = min(o.floodSockets, 500), min(o.floodAttempts, 8)
	}
	if o.rounds < 1 || o.runDur < time.Second/2 || o.copyMiB < 1 {
		fmt.Fprintf(stderr, "bench: -rounds must be at least 1, -run at least 500ms, -copy-mib at least 1\n")
		return o, errors.New("bad flags")
	}
	// The flood is bounded: its sockets by the descriptors every process
	// may hold (checked again against RLIMIT_NOFILE at run time), its
	// time by the attempts.
	if o.floodSockets < 1 || o.floodSockets > 20000 || o.floodAttempts < 1 || o.floodAttempts > 200 ||
		o.floodEvery < 100*time.Millisecond || o.floodEvery > 10*time.Second {
		fmt.Fprintf(stderr, "bench: -flood-sockets must be 1-20000, -flood-attempts 1-200, -flood-every 100ms-10s\n")
		return o, errors.New("bad flags")
	}
	if strings.ContainsAny(o.save, `/\.`) {
		fmt.Fprintf(stderr, "bench: -save %q: expected a plain name such as flood-after\n", o.save)
		return o, errors.New("bad -save")
	}
	return o, nil
}

// run sets everything up, runs the scenarios, prints the markdown table to
// stdout and writes the result files. Progress goes to stderr.
func run(ctx context.Context, o options, stdout, stderr io.Writer) (err error) {
	names, err := selectScenarios(o.only)
	if err != nil {
		return err
	}
	out := o.out
	if out == "" {
		root, err := moduleRoot()
		if err != nil {
			return err
		}
		out = filepath.Join(root, "bench", "results")
	}
	started := time.Now()
	prog := newProgress(stderr)
	e, err := setup(ctx, setupOptions{spacegateBin: o.spacegate, keep: o.keep, log: prog.logf})
	if err != nil {
		return err
	}
	defer func() {
		prog.end()
		if cerr := e.close(o.keep); cerr != nil {
			err = errors.Join(err, fmt.Errorf("stopping what the harness started: %w", cerr))
		}
		if o.keep {
			fmt.Fprintf(stderr, "bench: kept the work directory %s\n", e.work)
		}
	}()

	mctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	rows := runScenarios(mctx, e, names, o, prog)
	prog.end()
	if ctx.Err() != nil {
		prog.logf("interrupted; reporting what was measured")
	} else if mctx.Err() != nil {
		prog.logf("stopped after -timeout %v; reporting what was measured", o.timeout)
	}

	rounds := o.rounds
	if slices.Equal(names, []string{"flood"}) {
		rounds = 1 // the flood scenario runs one round whatever -rounds says
	}
	root, _ := moduleRoot()
	res := &Results{
		Started: started.UTC().Format(time.RFC3339),
		Seconds: time.Since(started).Seconds(),
		Machine: describeMachine(context.WithoutCancel(ctx), root),
		Settings: Settings{Rounds: rounds, RunSeconds: o.runDur.Seconds(), Quick: o.quick, Scenarios: names,
			CopyMiB: o.copyMiB, IdleConns: o.idleConns, FDLimit: e.fdLimit, PgbenchScale: pgScale},
		Rows: rows,
	}
	res.Headlines = headlines(rows)
	if slices.Contains(names, "flood") {
		res.Settings.FloodSockets, res.Settings.FloodTries = min(o.floodSockets, maxIdleConns(e.fdLimit)), o.floodAttempts
	}
	writeMarkdown(stdout, res)
	base := "latest"
	if o.quick || len(o.only) > 0 {
		// A partial run must not replace the full results kept in git.
		base = "partial"
	}
	if o.save != "" {
		base = o.save
	}
	if err := writeResults(out, base, res); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "bench: wrote %s.{md,json,svg} in %s\n", base, out)
	return nil
}

// render reads a results JSON and writes its markdown to stdout and, beside
// it, its .md and .svg, so that a change to the report needs no new run.
func render(path string, stdout io.Writer) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading results: %w", err)
	}
	var r Results
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("reading results %s: %w", path, err)
	}
	compareFlood(r.Rows)
	r.Headlines = headlines(r.Rows)
	writeMarkdown(stdout, &r)
	base := strings.TrimSuffix(path, filepath.Ext(path))
	var md, svg strings.Builder
	writeMarkdown(&md, &r)
	if err := writeSVG(&svg, &r); err != nil {
		return err
	}
	for path, data := range map[string]string{base + ".md": md.String(), base + ".svg": svg.String()} {
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
	}
	return nil
}

// writeResults writes base.md, base.json and base.svg into dir.
func writeResults(dir, base string, r *Results) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating results directory: %w", err)
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding results: %w", err)
	}
	var md, svg strings.Builder
	writeMarkdown(&md, r)
	if err := writeSVG(&svg, r); err != nil {
		return err
	}
	for ext, data := range map[string]string{".json": string(js) + "\n", ".md": md.String(), ".svg": svg.String()} {
		path := filepath.Join(dir, base+ext)
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
	}
	return nil
}
