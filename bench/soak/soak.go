package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/spacegate/spacegate/allowlist"
	"github.com/spacegate/spacegate/internal/atomicfile"
	"github.com/spacegate/spacegate/internal/testenv"
	"github.com/spacegate/spacegate/tlsconf"
)

// cutWithin bounds how long a revoked certificate's session may live on.
const cutWithin = 10 * time.Second

// pgbenchInit creates pgbench's tables on the upstream directly.
func pgbenchInit(ctx context.Context, pg *testenv.Postgres) error {
	cmd := exec.CommandContext(ctx, "pgbench", "-i", "-s", "1", "-q", pg.ConnString())
	cmd.Env = testenv.EnvWithoutPG()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgbench -i: %w\n%s", err, out)
	}
	return nil
}

// soak runs pgbench through the gate for o.duration while reloading,
// revoking and sampling, and records everything in r.
func soak(ctx context.Context, o options, g *gate, r *report, w io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	r.start = start

	cert, key, _ := g.clientFiles()
	clients := strconv.Itoa(o.clients)
	threads := strconv.Itoa(min(o.clients, 2))
	secs := strconv.Itoa(int(o.duration.Seconds()))
	bench := exec.CommandContext(ctx, "pgbench", "-c", clients, "-j", threads, "-T", secs, "-P", "60", g.connString(cert, key))
	bench.Env = testenv.EnvWithoutPG()
	var out bytes.Buffer
	bench.Stdout, bench.Stderr = &out, &out
	if err := bench.Start(); err != nil {
		return fmt.Errorf("starting pgbench: %w", err)
	}
	benchDone := make(chan error, 1)
	go func() { benchDone <- bench.Wait() }()

	var wg sync.WaitGroup
	wg.Go(func() { every(ctx, o.sampleEvery, 0, func(int) { r.sample(g, w) }) })
	wg.Go(func() { every(ctx, o.reloadEvery, o.reloadEvery/3, func(n int) { r.reloaded(reload(ctx, g, n)) }) })
	// Off the sampling ticks, so that a revocation's short-lived session
	// does not land in a sample.
	rv := &revoker{g: g, dir: filepath.Dir(g.logPath)}
	wg.Go(func() {
		every(ctx, o.revokeEvery, o.sampleEvery/2, func(n int) {
			took, err := rv.cycle(ctx, n)
			r.revoked(took, err, w)
		})
	})

	benchErr := <-benchDone
	cancel()
	wg.Wait()
	r.elapsed = time.Since(start)
	r.pgbench = out.String()
	r.pgbenchErr = benchErr
	r.parsePgbench()
	if !g.alive() {
		return fmt.Errorf("spacegate exited during the soak\n%s", tail(g.logPath))
	}
	return nil
}

// every calls f(1), f(2), ... until ctx ends: the first call after first
// (after d if first is zero), then one every d.
func every(ctx context.Context, d, first time.Duration, f func(n int)) {
	if first == 0 {
		first = d
	}
	t := time.NewTimer(first)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f(n)
		t.Reset(d)
	}
}

// reload rewrites the PostgreSQL route's rules file with a changed
// description, as `spacegate ip-rules` would, and waits for the gate to
// load it.
func reload(ctx context.Context, g *gate, n int) error {
	before, err := g.metric("spacegate_config_generation")
	if err != nil {
		return err
	}
	store := &allowlist.Store{Path: filepath.Join(g.dir, "rules", qsPostgresRoute+".yaml")}
	err = store.Update(ctx, func(rules *allowlist.Rules) error {
		if len(rules.Rules) == 0 {
			return errors.New("the rules file has no rule to change")
		}
		rules.Rules[0].Description = fmt.Sprintf("loopback (IPv4), soak rewrite %d", n)
		return nil
	})
	if err != nil {
		return fmt.Errorf("rewriting the rules file: %w", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		gen, err := g.metric("spacegate_config_generation")
		if err == nil && gen > before {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("rules file rewrite %d: config generation still %v after 5s", n, before)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// revoker issues, uses and revokes client certificates from the space CA.
type revoker struct {
	g       *gate
	dir     string
	revoked []x509.RevocationListEntry
}

// cycle issues a certificate for the PostgreSQL route, opens a session with
// it, revokes it by rewriting the CRL, and returns how long the gate took
// to cut that session.
func (rv *revoker) cycle(ctx context.Context, n int) (time.Duration, error) {
	pki := filepath.Join(rv.g.dir, "pki")
	ca, err := tlsconf.LoadCA(filepath.Join(pki, "ca.crt"), filepath.Join(pki, "ca.key"))
	if err != nil {
		return 0, err
	}
	uri, err := url.Parse(tlsconf.RouteURI("spacegate", qsPostgresRoute, uuid.NewString()))
	if err != nil {
		return 0, err
	}
	iss, err := ca.Issue(tlsconf.IssueRequest{CommonName: fmt.Sprintf("soak-revoked-%d", n), URIs: []*url.URL{uri}})
	if err != nil {
		return 0, err
	}
	certFile, keyFile := filepath.Join(rv.dir, fmt.Sprintf("revoked-%d.crt", n)), filepath.Join(rv.dir, fmt.Sprintf("revoked-%d.key", n))
	if err := os.WriteFile(certFile, iss.CertPEM, 0o644); err != nil {
		return 0, err
	}
	if err := os.WriteFile(keyFile, iss.KeyPEM, 0o600); err != nil {
		return 0, err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, rv.g.connString(certFile, keyFile))
	if err != nil {
		return 0, fmt.Errorf("connecting with a new certificate: %w", err)
	}
	defer conn.Close(context.Background())
	if err := ping(ctx, conn); err != nil {
		return 0, fmt.Errorf("a session with a new certificate: %w", err)
	}

	rv.revoked = append(rv.revoked, x509.RevocationListEntry{SerialNumber: iss.Cert.SerialNumber, RevocationTime: time.Now()})
	crl, err := ca.CRL(rv.revoked, nil, time.Time{}, time.Time{})
	if err != nil {
		return 0, err
	}
	revokedAt := time.Now()
	if err := atomicfile.WriteFile(filepath.Join(pki, "ca.crl"), crl, 0o644); err != nil {
		return 0, err
	}
	for {
		err := ping(ctx, conn)
		if err != nil {
			took := time.Since(revokedAt)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "57P01" || !strings.Contains(pgErr.Message, "revoked") {
				return took, fmt.Errorf("the revoked session ended with %v, want FATAL 57P01 naming the revocation", err)
			}
			break
		}
		if time.Since(revokedAt) > cutWithin {
			return 0, fmt.Errorf("the session of revoked certificate %s still works %s after the CRL was rewritten",
				tlsconf.FormatSerial(iss.Cert.SerialNumber), cutWithin)
		}
		time.Sleep(50 * time.Millisecond)
	}
	took := time.Since(revokedAt)
	// And the certificate is refused from then on.
	again, err := pgx.Connect(cctx, rv.g.connString(certFile, keyFile))
	if err == nil {
		again.Close(context.Background())
		return took, errors.New("a revoked certificate connected again")
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28000" {
		return took, fmt.Errorf("a revoked certificate was refused with %v, want FATAL 28000", err)
	}
	return took, nil
}

func ping(ctx context.Context, c *pgx.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var one int
	return c.QueryRow(ctx, "select 1").Scan(&one)
}

// pgbench summary lines.
var (
	reFailed    = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	reProcessed = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
	reTPS       = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
)
