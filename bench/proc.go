package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spacegate/spacegate/internal/testenv"
)

const (
	// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat.
	// It is 100 on every Linux architecture Go supports.
	clockTicks = 100
	// stopTimeout bounds a graceful stop before the process group is
	// killed.
	stopTimeout = 5 * time.Second
	// readyTimeout bounds how long a started service may take to listen.
	readyTimeout = 15 * time.Second
	// logTail is how much of a log an error quotes.
	logTail = 2 << 10
)

// process is one run of a program the harness started, in its own process
// group, with its output appended to a log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error
}

// startProcess starts argv with its output appended to logPath, as cred's
// user when cred is not nil. The child is killed if the harness dies.
func startProcess(name string, argv []string, dir, logPath string, cred *syscall.Credential) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening log of %s: %w", name, err)
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = testenv.EnvWithoutPG()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	testenv.KillWithParent(cmd.SysProcAttr)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// pid returns the process id.
func (p *process) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group and, after stopTimeout, SIGKILL,
// and waits until the process is reaped.
func (p *process) stop() error {
	if p.exited() {
		return nil
	}
	pg := -p.cmd.Process.Pid
	if err := syscall.Kill(pg, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stopping %s: %w", p.name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(stopTimeout):
	}
	if err := syscall.Kill(pg, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("killing %s: %w", p.name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(stopTimeout):
		return fmt.Errorf("%s (pid %d) not reaped %v after SIGKILL", p.name, p.pid(), stopTimeout)
	}
}

// awaitListening waits until every address accepts TCP connections, the
// process ends, or readyTimeout passes.
func (p *process) awaitListening(ctx context.Context, addrs ...string) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for _, addr := range addrs {
		for {
			if p.exited() {
				return fmt.Errorf("%s exited before listening on %s (%v); its log ends:\n%s", p.name, addr, p.waitErr, tail(p.logPath))
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", addr)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s not listening on %s after %v: %w; its log ends:\n%s", p.name, addr, readyTimeout, err, tail(p.logPath))
			case <-time.After(30 * time.Millisecond):
			}
		}
	}
	return nil
}

// tail returns the end of a log file, for error messages.
func tail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", path, err)
	}
	from := max(0, fi.Size()-logTail)
	b, _ := io.ReadAll(io.NewSectionReader(f, from, fi.Size()-from))
	return strings.TrimSpace(string(b))
}

// cpuTime returns the user plus system CPU time the process has used, all
// threads together, from /proc/PID/stat.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("reading CPU time of pid %d: %w", pid, err)
	}
	// The command name, field 2, may hold spaces; the fields after it
	// follow its closing parenthesis.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("reading CPU time of pid %d: no ')' in %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so utime (field 14) is f[11], stime f[12].
	if len(f) < 13 {
		return 0, fmt.Errorf("reading CPU time of pid %d: %d fields after the command, expected at least 13", pid, len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("reading CPU time of pid %d: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// memory returns the resident set size and its peak (VmRSS, VmHWM) of the
// process, in bytes.
func memory(pid int) (rss, peak int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("reading memory of pid %d: %w", pid, err)
	}
	for line := range strings.Lines(string(b)) {
		key, val, ok := strings.Cut(line, ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("reading memory of pid %d: %s: %w", pid, key, err)
		}
		if key == "VmRSS" {
			rss = kb << 10
		} else {
			peak = kb << 10
		}
	}
	return rss, peak, nil
}

// resetPeak sets the process's VmHWM back to its current RSS, so that the
// peak seen after a run is that run's.
func resetPeak(pid int) error {
	// "5" resets the peak RSS (Documentation/filesystems/proc.rst).
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		return fmt.Errorf("resetting peak RSS of pid %d: %w", pid, err)
	}
	return nil
}
