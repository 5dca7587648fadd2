package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// postgresVersionsDir is where Debian installs each PostgreSQL major
// version's server binaries, off PATH.
const postgresVersionsDir = "/usr/lib/postgresql"

// initdbTimeout bounds initdb, which with --no-sync takes about a second.
const initdbTimeout = 2 * time.Minute

// Postgres is a throwaway PostgreSQL server listening on 127.0.0.1 with
// trust authentication for every local connection, so any user name
// connects without a password.
//
// The exported fields describe the server and must not be changed. Its
// methods are safe for concurrent use. The zero value is not usable; call
// StartPostgres or StartPostgresT.
type Postgres struct {
	// Host is the address the server listens on, always "127.0.0.1".
	Host string
	// Port is the TCP port, chosen free at start and kept across Stop and
	// Start.
	Port int
	// Addr is "Host:Port".
	Addr string
	// User is the superuser, "postgres".
	User string
	// Database is the database that always exists, "postgres".
	Database string
	// Dir is the server's private directory, removed by Close.
	Dir string
	// DataDir is the cluster's data directory inside Dir.
	DataDir string
	// SocketDir holds the server's Unix socket, inside Dir.
	SocketDir string
	// LogFile collects the server's output across restarts.
	LogFile string
	// CertFile is the PEM file of the server's self-signed certificate
	// when started with SSL, for clients to trust as a root; otherwise "".
	CertFile string

	binDir string
	cred   *syscall.Credential // nil: run as the current user

	mu     sync.Mutex
	proc   *serverProcess // nil: stopped
	closed bool
}

// PostgresOptions configures StartPostgres. The zero value starts a plain
// server without TLS.
type PostgresOptions struct {
	// SSL turns on ssl=on with a self-signed server certificate for
	// 127.0.0.1, ::1 and localhost, written to Postgres.CertFile. Plain
	// connections are still accepted.
	SSL bool
	// Conf holds extra postgresql.conf lines, appended after testenv's own
	// settings so that they override them. Listen address, port and socket
	// directory are set on the command line and cannot be overridden.
	Conf []string
}

// StartPostgres creates a cluster in a new temporary directory with initdb,
// starts postgres on a free 127.0.0.1 port, and waits until it accepts
// connections. It needs no testing.T, so TestMain can share one server
// across a package; the caller must Close it.
//
// When running as root the server runs as the "postgres" user, because
// PostgreSQL refuses to run as root. A start that fails names the cause and
// quotes the end of the server log.
func StartPostgres(opts PostgresOptions) (*Postgres, error) {
	binDir, err := PostgresBinDir()
	if err != nil {
		return nil, err
	}
	cred, err := PostgresCredential()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "spacegate-pg-*")
	if err != nil {
		return nil, fmt.Errorf("creating PostgreSQL directory: %w", err)
	}
	p := &Postgres{
		Host:      "127.0.0.1",
		User:      "postgres",
		Database:  "postgres",
		Dir:       dir,
		DataDir:   filepath.Join(dir, "data"),
		SocketDir: filepath.Join(dir, "sock"),
		LogFile:   filepath.Join(dir, "postgres.log"),
		binDir:    binDir,
		cred:      cred,
	}
	if err := p.create(opts); err != nil {
		return nil, errors.Join(err, os.RemoveAll(dir))
	}
	var startErr error
	for range serverStartAttempts {
		port, err := freeLoopbackPort()
		if err != nil {
			return nil, errors.Join(err, os.RemoveAll(dir))
		}
		p.Port, p.Addr = port, loopbackAddr(port)
		var retry bool
		retry, startErr = p.start()
		if startErr == nil {
			return p, nil
		}
		if !retry {
			break
		}
	}
	return nil, errors.Join(startErr, os.RemoveAll(dir))
}

// StartPostgresT is StartPostgres for a test: it skips t (or fails it, see
// Strict) when the PostgreSQL server binaries or, as root, the "postgres"
// user are missing, fails t when the server does not start, and closes the
// server when t ends.
func StartPostgresT(t testing.TB, opts PostgresOptions) *Postgres {
	t.Helper()
	Require(t, "initdb", "postgres")
	if _, err := PostgresCredential(); err != nil {
		if Strict() {
			t.Fatalf("%v; failing because %s=1", err, StrictEnv)
		}
		t.Skipf("%v; set %s=1 to fail instead of skip", err, StrictEnv)
	}
	p, err := StartPostgres(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("closing PostgreSQL: %v", err)
		}
	})
	return p
}

// ConnString returns a keyword/value connection string for the superuser
// over TCP without TLS, accepted by pgx, libpq and psql.
func (p *Postgres) ConnString() string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", p.Host, p.Port, p.User, p.Database)
}

// Exec runs sql, which may hold several statements, on a new pgx connection
// straight to the server, and closes the connection.
func (p *Postgres) Exec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, p.ConnString())
	if err != nil {
		return fmt.Errorf("connecting to PostgreSQL at %s: %w", p.Addr, err)
	}
	_, err = conn.Exec(ctx, sql)
	if cerr := conn.Close(ctx); err == nil && cerr != nil {
		return fmt.Errorf("closing connection to PostgreSQL at %s: %w", p.Addr, cerr)
	}
	if err != nil {
		return fmt.Errorf("executing %q on PostgreSQL at %s: %w", sql, p.Addr, err)
	}
	return nil
}

// Stop shuts the server down with a fast shutdown, which aborts open
// sessions, and keeps its data so that Start can bring it back. It is for
// tests of an upstream that goes away. Stop on a stopped server does
// nothing.
func (p *Postgres) Stop() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopLocked()
}

func (p *Postgres) stopLocked() error {
	if p.proc == nil {
		return nil
	}
	// SIGINT is PostgreSQL's fast shutdown: it disconnects clients rather
	// than waiting for them, as SIGTERM's smart shutdown would.
	err := p.proc.stop(syscall.SIGINT)
	p.proc = nil
	if err != nil {
		return fmt.Errorf("stopping PostgreSQL on %s: %w", p.Addr, err)
	}
	return nil
}

// Start starts a stopped server again on the same port and waits until it
// accepts connections. It fails if another process took the port meanwhile.
// Start on a running server does nothing.
func (p *Postgres) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return fmt.Errorf("starting PostgreSQL on %s: server is closed", p.Addr)
	}
	if p.proc != nil && !p.proc.exited() {
		return nil
	}
	_, err := p.startLocked()
	return err
}

// Close stops the server, killing it if a fast shutdown takes too long, and
// removes Dir. Close on a closed server does nothing.
func (p *Postgres) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	err := p.stopLocked()
	if rerr := os.RemoveAll(p.Dir); rerr != nil {
		err = errors.Join(err, fmt.Errorf("removing PostgreSQL directory: %w", rerr))
	}
	return err
}

// create runs initdb and writes the configuration.
func (p *Postgres) create(opts PostgresOptions) error {
	// The server user must reach its data directory through Dir, which
	// MkdirTemp made 0700 for us.
	if err := os.Chmod(p.Dir, 0o755); err != nil {
		return fmt.Errorf("creating PostgreSQL directory: %w", err)
	}
	if err := os.Mkdir(p.SocketDir, 0o755); err != nil {
		return fmt.Errorf("creating PostgreSQL socket directory: %w", err)
	}
	for _, path := range []string{p.Dir, p.SocketDir} {
		if err := p.chown(path); err != nil {
			return err
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), initdbTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(p.binDir, "initdb"),
		"-D", p.DataDir, "-A", "trust", "-U", p.User, "--no-sync",
		"-E", "UTF8", "--locale=C", "--no-instructions")
	p.prepare(cmd)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("running initdb in %s: %w; output:\n%s", p.DataDir, err, strings.TrimSpace(string(out)))
	}

	conf := []string{
		"",
		"# Added by spacegate internal/testenv: durability is worth nothing",
		"# to a throwaway server and costs test time.",
		"fsync = off",
		"synchronous_commit = off",
		"full_page_writes = off",
		"max_connections = 200",
		"shared_buffers = 32MB",
	}
	if opts.SSL {
		lines, err := p.writeServerCert()
		if err != nil {
			return err
		}
		conf = append(conf, lines...)
	}
	conf = append(conf, opts.Conf...)
	f, err := os.OpenFile(filepath.Join(p.DataDir, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("writing postgresql.conf: %w", err)
	}
	_, err = f.WriteString(strings.Join(conf, "\n") + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing postgresql.conf: %w", err)
	}
	return nil
}

// writeServerCert writes a self-signed certificate and its key into the
// data directory, where postgres insists the key be private to it, and a
// copy of the certificate for clients to CertFile. It returns the
// postgresql.conf lines that use them.
func (p *Postgres) writeServerCert() ([]string, error) {
	certPEM, keyPEM, err := selfSignedServerCert("spacegate testenv postgres")
	if err != nil {
		return nil, fmt.Errorf("creating PostgreSQL server certificate: %w", err)
	}
	files := []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{filepath.Join(p.DataDir, "server.crt"), certPEM, 0o600},
		{filepath.Join(p.DataDir, "server.key"), keyPEM, 0o600},
	}
	for _, f := range files {
		if err := os.WriteFile(f.path, f.data, f.mode); err != nil {
			return nil, fmt.Errorf("writing PostgreSQL server certificate: %w", err)
		}
		if err := p.chown(f.path); err != nil {
			return nil, err
		}
	}
	p.CertFile = filepath.Join(p.Dir, "server.crt")
	if err := os.WriteFile(p.CertFile, certPEM, 0o644); err != nil {
		return nil, fmt.Errorf("writing PostgreSQL server certificate: %w", err)
	}
	return []string{
		"ssl = on",
		"ssl_cert_file = 'server.crt'",
		"ssl_key_file = 'server.key'",
	}, nil
}

// start starts postgres on p.Port. retry reports whether it failed only
// because the port was taken.
func (p *Postgres) start() (retry bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.startLocked()
}

func (p *Postgres) startLocked() (retry bool, err error) {
	cmd := exec.Command(filepath.Join(p.binDir, "postgres"),
		"-D", p.DataDir, "-p", strconv.Itoa(p.Port), "-k", p.SocketDir,
		"-c", "listen_addresses="+p.Host)
	p.prepare(cmd)
	proc, err := startServerProcess(cmd, p.LogFile)
	if err != nil {
		return false, fmt.Errorf("starting PostgreSQL on %s: %w", p.Addr, err)
	}
	if err := p.awaitReady(proc); err != nil {
		if proc.exited() {
			return proc.addrInUse(), proc.serverError("starting PostgreSQL on "+p.Addr, err)
		}
		err = proc.serverError("starting PostgreSQL on "+p.Addr, err)
		return false, proc.kill(err)
	}
	p.proc = proc
	return false, nil
}

// awaitReady polls until the server completes a connection, which it
// refuses while it is still starting up even though the port is open.
func (p *Postgres) awaitReady(proc *serverProcess) error {
	ctx, cancel := context.WithTimeout(context.Background(), serverStartTimeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		if proc.exited() {
			return errors.New("server exited before accepting connections")
		}
		attempt, cancelAttempt := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgconn.Connect(attempt, p.ConnString())
		if err == nil {
			err = conn.Close(attempt)
		}
		cancelAttempt()
		if err == nil {
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("server not accepting connections after %v: %w", serverStartTimeout, lastErr)
		case <-proc.done:
		case <-tick.C:
		}
	}
}

// prepare sets what initdb and postgres share: the user they run as, a
// working directory they can enter, and an environment without the
// caller's PG* variables, which would redirect them.
func (p *Postgres) prepare(cmd *exec.Cmd) {
	cmd.Dir = p.Dir
	cmd.Env = EnvWithoutPG()
	if p.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	}
}

// chown gives path to the server user when the server runs as another
// user than the caller.
func (p *Postgres) chown(path string) error {
	if p.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
		return fmt.Errorf("giving %s to the postgres user: %w", path, err)
	}
	return nil
}

// EnvWithoutPG returns this process's environment without its PG*
// variables, which would redirect libpq clients and PostgreSQL servers
// started from it.
func EnvWithoutPG() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "PG")
	})
}

// PostgresCredential returns whom to run initdb and postgres (and other
// servers that refuse root, such as PgBouncer) as: nil, the caller, unless
// the caller is root, in which case the "postgres" user Debian's packages
// create.
func PostgresCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, servers that refuse root need an unprivileged user to run as: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parsing uid %q of user postgres: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parsing gid %q of user postgres: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// PostgresBinDir returns the directory holding the PostgreSQL server
// binaries: the newest /usr/lib/postgresql/VERSION/bin with an initdb, as
// Debian installs them, or else the directory of initdb on PATH.
func PostgresBinDir() (string, error) {
	matches, _ := filepath.Glob(filepath.Join(postgresVersionsDir, "*", "bin", "initdb"))
	best, bestVersion := "", []int(nil)
	for _, initdb := range matches {
		bin := filepath.Dir(initdb)
		v, ok := parsePostgresVersion(filepath.Base(filepath.Dir(bin)))
		if !ok {
			continue
		}
		if best == "" || slices.Compare(v, bestVersion) > 0 {
			best, bestVersion = bin, v
		}
	}
	if best != "" {
		return best, nil
	}
	path, err := exec.LookPath("initdb")
	if err != nil {
		return "", fmt.Errorf("finding PostgreSQL server binaries: no initdb in %s/*/bin or on PATH (install Debian package postgresql): %w", postgresVersionsDir, err)
	}
	return filepath.Dir(path), nil
}

// parsePostgresVersion parses a Debian version directory name such as
// "15" or "9.6" into numbers that compare in release order.
func parsePostgresVersion(name string) ([]int, bool) {
	var v []int
	for part := range strings.SplitSeq(name, ".") {
		n, err := strconv.Atoi(part)
		if err != nil || n < 0 {
			return nil, false
		}
		v = append(v, n)
	}
	return v, true
}
