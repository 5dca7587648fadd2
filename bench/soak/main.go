package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spacegate/spacegate/internal/testenv"
)

// options are the command's flags.
type options struct {
	duration    time.Duration
	warmup      time.Duration
	clients     int
	reloadEvery time.Duration
	revokeEvery time.Duration
	sampleEvery time.Duration
	maxGrowth   float64
	keep        bool
}

func main() {
	var o options
	flag.DurationVar(&o.duration, "duration", 30*time.Minute, "how long pgbench runs through the gate")
	flag.DurationVar(&o.warmup, "warmup", 0, "samples before this are not compared (default: a sixth of -duration, at most 1m)")
	flag.IntVar(&o.clients, "clients", 4, "pgbench clients")
	flag.DurationVar(&o.reloadEvery, "reload-every", 10*time.Second, "how often a rules file is rewritten")
	flag.DurationVar(&o.revokeEvery, "revoke-every", time.Minute, "how often a certificate is issued, used and revoked")
	flag.DurationVar(&o.sampleEvery, "sample-every", 10*time.Second, "how often RSS and goroutines are sampled")
	flag.Float64Var(&o.maxGrowth, "max-growth", 0.20, "largest allowed growth of RSS and goroutines after warm-up, as a fraction")
	flag.BoolVar(&o.keep, "keep", false, "keep the working directory (config, PKI, logs)")
	flag.Parse()
	if flag.NArg() > 0 || o.duration < 30*time.Second || o.clients < 1 {
		fmt.Fprintln(os.Stderr, "usage: soak [-duration D (at least 30s)] [-clients N] [-warmup D] [-keep]")
		os.Exit(2)
	}
	if o.warmup == 0 {
		o.warmup = min(o.duration/6, time.Minute)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ok, err := run(ctx, o, os.Stdout)
	if err != nil {
		fmt.Fprintf(os.Stderr, "soak: %v\n", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}

// run sets everything up, soaks, tears down and reports whether the gate
// passed. An error means the soak could not run to its end.
func run(ctx context.Context, o options, w io.Writer) (ok bool, err error) {
	work, err := os.MkdirTemp("", "spacegate-soak-*")
	if err != nil {
		return false, err
	}
	defer func() {
		if o.keep || err != nil {
			fmt.Fprintf(w, "working directory kept: %s\n", work)
			return
		}
		os.RemoveAll(work)
	}()

	fmt.Fprintf(w, "building spacegate and starting PostgreSQL and Redis in %s\n", work)
	bin, err := buildSpacegate(ctx, work)
	if err != nil {
		return false, err
	}
	pg, err := testenv.StartPostgres(testenv.PostgresOptions{})
	if err != nil {
		return false, fmt.Errorf("starting PostgreSQL: %w", err)
	}
	defer pg.Close()
	redis, err := testenv.StartRedis()
	if err != nil {
		return false, fmt.Errorf("starting Redis: %w", err)
	}
	defer redis.Close()

	g, err := setupGate(ctx, bin, work, pg.Addr, redis.Addr)
	if err != nil {
		return false, err
	}
	if err := g.start(ctx); err != nil {
		return false, err
	}
	defer func() {
		if serr := g.stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	if err := pgbenchInit(ctx, pg); err != nil {
		return false, err
	}
	fmt.Fprintf(w, "gate pid %d: postgres %s -> %s, admin %s; soaking for %s (warm-up %s)\n",
		g.pid(), g.pgListen, pg.Addr, g.admin, o.duration, o.warmup)

	r := &report{opts: o}
	err = soak(ctx, o, g, r, w)
	r.print(w)
	if err != nil {
		return false, err
	}
	if ctx.Err() != nil {
		return false, errors.New("interrupted")
	}
	return r.ok(), nil
}
