package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spacegate/spacegate/internal/testenv"
)

// Roles of targets, which decide what a figure is compared with.
const (
	roleDirect  = "direct"  // the server itself, no proxy
	roleFloor   = "floor"   // a proxy that forwards bytes without TLS
	rolePeer    = "peer"    // a TLS-terminating proxy users pick instead
	roleSubject = "subject" // spacegate
)

// Target names.
const (
	targetDirect    = "direct-tls"
	targetHAProxy   = "haproxy"
	targetStunnel   = "stunnel"
	targetPgBouncer = "pgbouncer"
	targetSpacegate = "spacegate"
)

// pgScale is the pgbench scale factor: 1M accounts, about 160 MB.
const pgScale = 10

// target is one path a client can take to a server.
type target struct {
	name      string
	role      string
	svc       *service // the proxy process; nil for the direct path
	pgAddr    string   // "" when the target has no PostgreSQL path
	redisAddr string   // "" when the target has no Redis path
}

// service is a proxy the harness runs, which it can restart.
type service struct {
	name    string
	argv    []string
	dir     string
	logPath string
	cred    *syscall.Credential
	addrs   []string // where it listens, to wait for
	proc    *process
}

func (s *service) start(ctx context.Context) error {
	p, err := startProcess(s.name, s.argv, s.dir, s.logPath, s.cred)
	if err != nil {
		return err
	}
	s.proc = p
	if err := p.awaitListening(ctx, s.addrs...); err != nil {
		return errors.Join(err, p.stop())
	}
	return nil
}

func (s *service) stop() error {
	if s.proc == nil {
		return nil
	}
	err := s.proc.stop()
	s.proc = nil
	return err
}

// restart stops and starts the service, so that its memory figures start
// from nothing.
func (s *service) restart(ctx context.Context) error {
	if err := s.stop(); err != nil {
		return err
	}
	return s.start(ctx)
}

// bundle is the client credentials every target accepts.
type bundle struct {
	cert, key, rootCA string
}

// env is what the scenarios run against. close stops everything it
// started.
type env struct {
	work      string
	tools     map[string]string
	spacegate string // binary
	client    bundle
	pg        *testenv.Postgres
	redis     *testenv.Redis
	services  []*service
	targets   []*target
	fdLimit   uint64 // RLIMIT_NOFILE every child inherits
}

// setupOptions says how to build the environment.
type setupOptions struct {
	spacegateBin string // prebuilt binary; "" builds one from the module
	keep         bool   // keep the work directory
	log          func(format string, args ...any)
}

// setup builds the whole environment. On error it stops what it started.
func setup(ctx context.Context, o setupOptions) (e *env, err error) {
	tools, err := toolPaths()
	if err != nil {
		return nil, err
	}
	limit, err := raiseFDLimit()
	if err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "spacegate-bench-*")
	if err != nil {
		return nil, fmt.Errorf("creating work directory: %w", err)
	}
	// The postgres user must reach the files PgBouncer and PostgreSQL read.
	if err := os.Chmod(work, 0o755); err != nil {
		return nil, fmt.Errorf("creating work directory: %w", err)
	}
	e = &env{work: work, tools: tools, fdLimit: limit}
	// The returns below set e to nil: close what was built through a copy.
	built := e
	defer func() {
		if err != nil {
			err = errors.Join(err, built.close(o.keep))
			e = nil
		}
	}()
	o.log("work directory %s", work)

	e.spacegate = o.spacegateBin
	if e.spacegate == "" {
		o.log("building spacegate")
		if e.spacegate, err = buildSpacegate(ctx, work); err != nil {
			return nil, err
		}
	}
	gateDir := filepath.Join(work, "gate")
	if out, err := exec.CommandContext(ctx, e.spacegate, "quickstart", "--no-serve", "--dir", gateDir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("running spacegate quickstart: %w; output:\n%s", err, out)
	}
	e.client = bundle{
		cert:   filepath.Join(gateDir, "client", "postgresql.crt"),
		key:    filepath.Join(gateDir, "client", "postgresql.key"),
		rootCA: filepath.Join(gateDir, "client", "root.crt"),
	}
	cred, err := testenv.PostgresCredential() // PgBouncer refuses root too
	if err != nil {
		return nil, err
	}
	tlsDir, err := serverTLSFiles(work, gateDir, cred)
	if err != nil {
		return nil, err
	}

	o.log("starting PostgreSQL and loading pgbench data (scale %d)", pgScale)
	e.pg, err = testenv.StartPostgres(testenv.PostgresOptions{SSL: true, Conf: []string{
		"max_connections = 400",
		"shared_buffers = 256MB",
		// The same certificate as every proxy, and the space CA for client
		// certificates, so that one client bundle fits every path.
		fmt.Sprintf("ssl_cert_file = '%s'", filepath.Join(tlsDir, "server.crt")),
		fmt.Sprintf("ssl_key_file = '%s'", filepath.Join(tlsDir, "server.key")),
		fmt.Sprintf("ssl_ca_file = '%s'", filepath.Join(tlsDir, "ca.crt")),
	}})
	if err != nil {
		return nil, err
	}
	if err := e.loadPgbench(ctx); err != nil {
		return nil, err
	}

	o.log("starting Redis")
	e.redis, err = testenv.StartRedisTLS()
	if err != nil {
		return nil, err
	}
	if err := redisCommand(e.redis.Addr,
		"CONFIG", "SET",
		"tls-cert-file", filepath.Join(tlsDir, "server.crt"),
		"tls-key-file", filepath.Join(tlsDir, "server.key"),
		"tls-ca-cert-file", filepath.Join(tlsDir, "ca.crt"),
		"tls-auth-clients", "yes",
		"maxclients", strconv.FormatUint(max(limit, 64)-32, 10)); err != nil {
		return nil, fmt.Errorf("configuring Redis TLS: %w", err)
	}

	o.log("starting spacegate, stunnel, PgBouncer and HAProxy")
	if err := e.startProxies(ctx, gateDir, tlsDir, cred); err != nil {
		return nil, err
	}
	return e, nil
}

// close stops every process and removes the work directory unless keep.
func (e *env) close(keep bool) error {
	var errs []error
	for _, s := range e.services {
		errs = append(errs, s.stop())
	}
	if e.redis != nil {
		errs = append(errs, e.redis.Close())
	}
	if e.pg != nil {
		errs = append(errs, e.pg.Close())
	}
	if !keep {
		errs = append(errs, os.RemoveAll(e.work))
	}
	return errors.Join(errs...)
}

// raiseFDLimit raises the soft RLIMIT_NOFILE to the hard one, so that the
// harness and every child it starts can hold many connections, and returns
// it.
func raiseFDLimit() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("reading RLIMIT_NOFILE: %w", err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("raising RLIMIT_NOFILE to %d: %w", lim.Max, err)
	}
	return uint64(lim.Cur), nil // int64 on FreeBSD
}

// moduleRoot finds the spacegate module's directory from the working
// directory upwards.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("finding the spacegate module: %w", err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/spacegate/spacegate\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("finding the spacegate module: no go.mod of github.com/spacegate/spacegate in the working directory or above; run from the checkout or pass -spacegate")
		}
		dir = parent
	}
}

// buildSpacegate builds cmd/spacegate without the race detector into dir.
func buildSpacegate(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "spacegate")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/spacegate")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building spacegate: %w; output:\n%s", err, out)
	}
	return bin, nil
}

// serverTLSFiles copies the gate's server certificate, key and the space
// CA into a directory the unprivileged user owns, since PostgreSQL and
// PgBouncer insist on reading a private key of their own.
func serverTLSFiles(work, gateDir string, cred *syscall.Credential) (string, error) {
	dir := filepath.Join(work, "tls")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", fmt.Errorf("creating TLS directory: %w", err)
	}
	files := []struct {
		from, to string
		mode     os.FileMode
	}{
		{"pki/server.crt", "server.crt", 0o644},
		{"pki/server.key", "server.key", 0o600},
		{"pki/ca.crt", "ca.crt", 0o644},
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(gateDir, f.from))
		if err != nil {
			return "", fmt.Errorf("reading quickstart file: %w", err)
		}
		to := filepath.Join(dir, f.to)
		if err := os.WriteFile(to, b, f.mode); err != nil {
			return "", fmt.Errorf("writing %s: %w", to, err)
		}
		if err := chown(to, cred); err != nil {
			return "", err
		}
	}
	return dir, chown(dir, cred)
}

func chown(path string, cred *syscall.Credential) error {
	if cred == nil {
		return nil
	}
	if err := os.Chown(path, int(cred.Uid), int(cred.Gid)); err != nil {
		return fmt.Errorf("giving %s to uid %d: %w", path, cred.Uid, err)
	}
	return nil
}

// plainConnInfo is a libpq connection string straight to PostgreSQL
// without TLS, for setup.
func (e *env) plainConnInfo() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", e.pg.Port)
}

// connInfo is a libpq connection string to addr with TLS, verify-full and
// the client bundle.
func (e *env) connInfo(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=verify-full sslcert=%s sslkey=%s sslrootcert=%s",
		host, port, e.client.cert, e.client.key, e.client.rootCA)
}

// loadPgbench creates the pgbench tables and reads them into shared
// buffers, so that the first target measured does not pay for a cold
// cache.
func (e *env) loadPgbench(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.tools["pgbench"], "-i", "-q", "-s", strconv.Itoa(pgScale), e.plainConnInfo())
	cmd.Env = testenv.EnvWithoutPG()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("running pgbench -i: %w; output:\n%s", err, out)
	}
	return e.pg.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_prewarm;
		SELECT pg_prewarm(c) FROM unnest(ARRAY['pgbench_accounts', 'pgbench_accounts_pkey',
			'pgbench_branches', 'pgbench_tellers']::regclass[]) AS c`)
}

// redisCommand sends one command to Redis without TLS and expects +OK.
func redisCommand(addr string, args ...string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading reply to %s: %w", args[0], err)
	}
	if line = strings.TrimSpace(line); line != "+OK" {
		return fmt.Errorf("%s %s replied %q, expected +OK", args[0], args[1], line)
	}
	return nil
}
