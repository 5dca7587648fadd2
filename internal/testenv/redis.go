package testenv

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
	"sync"
	"syscall"
	"testing"
	"time"
)

// Redis is a throwaway redis-server on 127.0.0.1 without a password,
// persistence or protected mode.
//
// The exported fields describe the server and must not be changed. Its
// methods are safe for concurrent use. The zero value is not usable; call
// StartRedis or StartRedisT.
type Redis struct {
	// Addr is "127.0.0.1:Port".
	Addr string
	// Port is the TCP port, chosen free at start and kept across Stop and
	// Start.
	Port int
	// Dir is the server's private working directory, removed by Close.
	Dir string
	// LogFile collects the server's output across restarts.
	LogFile string
	// TLSAddr is "127.0.0.1:PORT" of the TLS port of a server started with
	// StartRedisTLS (clients need no certificate), else "".
	TLSAddr string
	// CertFile is the PEM of the TLS port's self-signed certificate, valid
	// for 127.0.0.1, ::1 and localhost, for clients to trust; else "".
	CertFile string

	binPath string
	keyFile string

	mu     sync.Mutex
	proc   *serverProcess // nil: stopped
	closed bool
}

// StartRedis starts redis-server on a free 127.0.0.1 port in a new
// temporary directory and waits until it answers PING. It needs no
// testing.T, so TestMain can share one server across a package; the caller
// must Close it. A start that fails quotes the end of the server log.
func StartRedis() (*Redis, error) { return startRedis(false) }

// StartRedisTLS is StartRedis with a TLS port as well (tls-port, no client
// certificates), whose address is TLSAddr.
func StartRedisTLS() (*Redis, error) { return startRedis(true) }

func startRedis(withTLS bool) (*Redis, error) {
	bin, err := LookBinary("redis-server")
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "spacegate-redis-*")
	if err != nil {
		return nil, fmt.Errorf("creating Redis directory: %w", err)
	}
	r := &Redis{Dir: dir, LogFile: filepath.Join(dir, "redis.log"), binPath: bin}
	if withTLS {
		certPEM, keyPEM, err := selfSignedServerCert("localhost")
		if err != nil {
			return nil, errors.Join(err, os.RemoveAll(dir))
		}
		r.CertFile, r.keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
		if err := errors.Join(os.WriteFile(r.CertFile, certPEM, 0o644), os.WriteFile(r.keyFile, keyPEM, 0o600)); err != nil {
			return nil, errors.Join(err, os.RemoveAll(dir))
		}
	}
	var startErr error
	for range serverStartAttempts {
		port, err := freeLoopbackPort()
		if err != nil {
			return nil, errors.Join(err, os.RemoveAll(dir))
		}
		r.Port, r.Addr = port, loopbackAddr(port)
		if withTLS {
			tlsPort, err := freeLoopbackPort()
			if err != nil {
				return nil, errors.Join(err, os.RemoveAll(dir))
			}
			r.TLSAddr = loopbackAddr(tlsPort)
		}
		var retry bool
		retry, startErr = r.start()
		if startErr == nil {
			return r, nil
		}
		if !retry {
			break
		}
	}
	return nil, errors.Join(startErr, os.RemoveAll(dir))
}

// StartRedisT is StartRedis for a test: it skips t (or fails it, see
// Strict) when redis-server is missing, fails t when the server does not
// start, and closes the server when t ends.
func StartRedisT(t testing.TB) *Redis {
	t.Helper()
	Require(t, "redis-server")
	r, err := StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("closing Redis: %v", err)
		}
	})
	return r
}

// Stop shuts the server down and keeps Dir so that Start can bring it back.
// It is for tests of an upstream that goes away. Stop on a stopped server
// does nothing.
func (r *Redis) Stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stopLocked()
}

func (r *Redis) stopLocked() error {
	if r.proc == nil {
		return nil
	}
	// With persistence off, SIGTERM exits at once without saving.
	err := r.proc.stop(syscall.SIGTERM)
	r.proc = nil
	if err != nil {
		return fmt.Errorf("stopping Redis on %s: %w", r.Addr, err)
	}
	return nil
}

// Start starts a stopped server again on the same port, empty, and waits
// until it answers PING. It fails if another process took the port
// meanwhile. Start on a running server does nothing.
func (r *Redis) Start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return fmt.Errorf("starting Redis on %s: server is closed", r.Addr)
	}
	if r.proc != nil && !r.proc.exited() {
		return nil
	}
	_, err := r.startLocked()
	return err
}

// Close stops the server, killing it if it takes too long, and removes
// Dir. Close on a closed server does nothing.
func (r *Redis) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	err := r.stopLocked()
	if rerr := os.RemoveAll(r.Dir); rerr != nil {
		err = errors.Join(err, fmt.Errorf("removing Redis directory: %w", rerr))
	}
	return err
}

// start starts redis-server on r.Port. retry reports whether it failed
// only because the port was taken.
func (r *Redis) start() (retry bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.startLocked()
}

func (r *Redis) startLocked() (retry bool, err error) {
	args := []string{
		"--port", strconv.Itoa(r.Port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", r.Dir,
		"--protected-mode", "no",
		"--daemonize", "no",
		"--logfile", ""}
	if r.TLSAddr != "" {
		_, tlsPort, _ := net.SplitHostPort(r.TLSAddr)
		args = append(args, "--tls-port", tlsPort, "--tls-cert-file", r.CertFile, "--tls-key-file", r.keyFile,
			"--tls-auth-clients", "no")
	}
	cmd := exec.Command(r.binPath, args...)
	cmd.Dir = r.Dir
	proc, err := startServerProcess(cmd, r.LogFile)
	if err != nil {
		return false, fmt.Errorf("starting Redis on %s: %w", r.Addr, err)
	}
	if err := r.awaitReady(proc); err != nil {
		if proc.exited() {
			return proc.addrInUse(), proc.serverError("starting Redis on "+r.Addr, err)
		}
		err = proc.serverError("starting Redis on "+r.Addr, err)
		return false, proc.kill(err)
	}
	r.proc = proc
	return false, nil
}

// awaitReady polls until the server answers PING with PONG.
func (r *Redis) awaitReady(proc *serverProcess) error {
	ctx, cancel := context.WithTimeout(context.Background(), serverStartTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		if proc.exited() {
			return errors.New("server exited before answering PING")
		}
		if lastErr = redisPing(ctx, r.Addr); lastErr == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("server not answering PING after %v: %w", serverStartTimeout, lastErr)
		case <-proc.done:
		case <-tick.C:
		}
	}
}

// redisPing sends one inline PING and expects +PONG. It speaks RESP by hand
// so that the package needs no client that leaves goroutines behind.
func redisPing(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(deadline); err != nil {
			return err
		}
	}
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return fmt.Errorf("sending PING: %w", err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading PING reply: %w", err)
	}
	if got := strings.TrimSpace(line); got != "+PONG" {
		return fmt.Errorf("PING replied %q, expected \"+PONG\"", got)
	}
	return nil
}
