package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spacegate/spacegate/internal/atomicfile"
	"github.com/spacegate/spacegate/internal/testenv"
)

// The quickstart's addresses, which setupGate replaces.
const (
	qsPostgresListen   = "127.0.0.1:6432"
	qsRedisListen      = "127.0.0.1:6380"
	qsAdminListen      = "127.0.0.1:9187"
	qsPostgresUpstream = "127.0.0.1:5432"
	qsRedisUpstream    = "127.0.0.1:6379"
	qsPostgresRoute    = "dev-postgres"
)

// gate is a spacegate process serving the quickstart layout in dir.
type gate struct {
	bin      string
	dir      string // the quickstart directory
	config   string
	logPath  string
	pgListen string
	admin    string // host:port of the admin endpoint
	cmd      *exec.Cmd
	done     chan struct{}
	waitErr  error
	http     *http.Client
}

// buildSpacegate builds ./cmd/spacegate of the module this command belongs
// to into dir.
func buildSpacegate(ctx context.Context, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("finding the module root with go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the spacegate module: run soak from the repository")
	}
	bin := filepath.Join(dir, "spacegate")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/spacegate")
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/spacegate: %w\n%s", err, out)
	}
	return bin, nil
}

// setupGate makes the quickstart layout under work and points its config
// at free loopback ports and the given upstreams.
func setupGate(ctx context.Context, bin, work, pgUpstream, redisUpstream string) (*gate, error) {
	dir := filepath.Join(work, "gate")
	out, err := exec.CommandContext(ctx, bin, "quickstart", "--no-serve", "--dir", dir).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("spacegate quickstart --no-serve: %w\n%s", err, out)
	}
	addrs, err := testenv.FreeAddrs(3)
	if err != nil {
		return nil, err
	}
	g := &gate{
		bin:      bin,
		dir:      dir,
		config:   filepath.Join(dir, "spacegate.yaml"),
		logPath:  filepath.Join(work, "gate.log"),
		pgListen: addrs[0],
		admin:    addrs[2],
		http:     &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	}
	cfg, err := os.ReadFile(g.config)
	if err != nil {
		return nil, err
	}
	text := string(cfg)
	for _, r := range []struct{ old, new string }{
		{"listen: " + qsPostgresListen, "listen: " + addrs[0]},
		{"listen: " + qsRedisListen, "listen: " + addrs[1]},
		{"listen: " + qsAdminListen, "listen: " + addrs[2]},
		{"upstream: " + qsPostgresUpstream, "upstream: " + pgUpstream},
		{"upstream: " + qsRedisUpstream, "upstream: " + redisUpstream},
		{"format: console", "format: json"},
	} {
		if !strings.Contains(text, r.old) {
			return nil, fmt.Errorf("the quickstart config %s has no %q to replace; has its layout changed?", g.config, r.old)
		}
		text = strings.Replace(text, r.old, r.new, 1)
	}
	if err := atomicfile.WriteFile(g.config, []byte(text), 0o644); err != nil {
		return nil, err
	}
	return g, nil
}

// clientFiles are the quickstart client bundle's certificate, key and root.
func (g *gate) clientFiles() (cert, key, root string) {
	c := filepath.Join(g.dir, "client")
	return filepath.Join(c, "postgresql.crt"), filepath.Join(c, "postgresql.key"), filepath.Join(c, "root.crt")
}

// connString is a libpq connection string through the gate with the given
// client certificate.
func (g *gate) connString(cert, key string) string {
	host, port, _ := net.SplitHostPort(g.pgListen)
	_, _, root := g.clientFiles()
	return fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=verify-full sslcert=%s sslkey=%s sslrootcert=%s connect_timeout=10",
		host, port, cert, key, root)
}

// start runs spacegate serve and waits until /readyz answers.
func (g *gate) start(ctx context.Context) error {
	logf, err := os.OpenFile(g.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	g.cmd = exec.Command(g.bin, "serve", "--config", g.config)
	g.cmd.Stdout, g.cmd.Stderr = logf, logf
	g.cmd.Env = testenv.EnvWithoutPG()
	// Its own process group, and killed if soak dies without cleaning up.
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	testenv.KillWithParent(g.cmd.SysProcAttr)
	if err := g.cmd.Start(); err != nil {
		return fmt.Errorf("starting spacegate: %w", err)
	}
	g.done = make(chan struct{})
	go func() { g.waitErr = g.cmd.Wait(); close(g.done) }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-g.done:
			return fmt.Errorf("spacegate exited at start: %v\n%s", g.waitErr, tail(g.logPath))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if _, err := g.get("/readyz"); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("spacegate not ready after 15s\n%s", tail(g.logPath))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (g *gate) pid() int { return g.cmd.Process.Pid }

// stop sends SIGTERM and waits for the gate to drain and exit.
func (g *gate) stop() error {
	if g.cmd == nil {
		return nil
	}
	select {
	case <-g.done:
		return fmt.Errorf("spacegate exited during the soak: %v\n%s", g.waitErr, tail(g.logPath))
	default:
	}
	g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.done:
		if g.waitErr != nil {
			return fmt.Errorf("spacegate exited with %v after SIGTERM\n%s", g.waitErr, tail(g.logPath))
		}
		return nil
	case <-time.After(30 * time.Second):
		syscall.Kill(-g.pid(), syscall.SIGKILL)
		<-g.done
		return errors.New("spacegate did not stop within 30s of SIGTERM; killed")
	}
}

// alive reports whether the gate process is still running.
func (g *gate) alive() bool {
	select {
	case <-g.done:
		return false
	default:
		return true
	}
}

// get fetches a path of the admin endpoint and requires 200 OK.
func (g *gate) get(path string) (string, error) {
	resp, err := g.http.Get("http://" + g.admin + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return string(b), nil
}

// metric returns the value of an unlabelled metric from /metrics.
func (g *gate) metric(name string) (float64, error) {
	body, err := g.get("/metrics")
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(rest), 64)
		}
	}
	return 0, fmt.Errorf("/metrics has no %s", name)
}

// rss returns the gate's resident set size in bytes.
func (g *gate) rss() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", g.pid()))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmRSS %q: %w", rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no VmRSS", g.pid())
}

// tail returns the end of a log file, for an error message.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", path, err)
	}
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return string(b)
}
