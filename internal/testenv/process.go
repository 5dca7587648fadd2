package testenv

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

const (
	// serverStartTimeout bounds how long a server may take to accept
	// connections after its process starts.
	serverStartTimeout = 30 * time.Second
	// serverStopTimeout bounds a graceful shutdown before the process group
	// is killed.
	serverStopTimeout = 30 * time.Second
	// serverKillTimeout bounds the wait for a killed process to be reaped.
	serverKillTimeout = 10 * time.Second
	// serverStartAttempts is how many ports a server start tries before it
	// gives up on "address in use".
	serverStartAttempts = 3
	// serverLogTail is how much of a server log an error quotes.
	serverLogTail = 4 << 10
)

// serverProcess is one run of a server binary. done is closed once the
// process has exited and waitErr holds what Wait returned.
type serverProcess struct {
	cmd     *exec.Cmd
	logPath string
	logFrom int64 // size of the log when this run started
	done    chan struct{}
	waitErr error
}

// startServerProcess starts cmd in its own process group with stdout and
// stderr appended to logPath, and has it killed if the caller dies. Its own
// process group lets stop kill the server's children too, and keeps a ^C
// sent to the test binary's group from racing the shutdown that stop
// performs.
func startServerProcess(cmd *exec.Cmd, logPath string) (*serverProcess, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening server log: %w", err)
	}
	// The child inherits its own descriptor; ours is only needed until
	// Start has passed it on.
	defer logf.Close()
	fi, err := logf.Stat()
	if err != nil {
		return nil, fmt.Errorf("opening server log: %w", err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	KillWithParent(cmd.SysProcAttr)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", cmd.Path, err)
	}
	p := &serverProcess{cmd: cmd, logPath: logPath, logFrom: fi.Size(), done: make(chan struct{})}
	go p.wait()
	return p, nil
}

func (p *serverProcess) wait() {
	p.waitErr = p.cmd.Wait()
	close(p.done)
}

// exited reports whether the process has exited.
func (p *serverProcess) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig to the server and waits for it to exit. If it has not
// exited within serverStopTimeout, stop kills its whole process group.
func (p *serverProcess) stop(sig syscall.Signal) error {
	if p.exited() {
		return nil
	}
	// The signal goes to the server alone: postgres relays shutdown to its
	// children itself, and signalling them directly would make it think
	// they crashed.
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signalling %s (pid %d): %w", p.cmd.Path, p.cmd.Process.Pid, err)
	}
	timer := time.NewTimer(serverStopTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
	}
	return p.kill(fmt.Errorf("%s (pid %d) still running %v after %v", p.cmd.Path, p.cmd.Process.Pid, serverStopTimeout, sig))
}

// kill sends SIGKILL to the process group and waits, bounded, for the
// leader to be reaped. cause says why, and is returned with any failure.
func (p *serverProcess) kill(cause error) error {
	// With Setpgid the group id is the leader's pid.
	if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return errors.Join(cause, fmt.Errorf("killing process group %d: %w", p.cmd.Process.Pid, err))
	}
	timer := time.NewTimer(serverKillTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return cause
	case <-timer.C:
		return errors.Join(cause, fmt.Errorf("process group %d not reaped %v after SIGKILL", p.cmd.Process.Pid, serverKillTimeout))
	}
}

// log returns what this run wrote to the log, at most the last
// serverLogTail bytes of it.
func (p *serverProcess) log() string {
	f, err := os.Open(p.logPath)
	if err != nil {
		return fmt.Sprintf("(reading server log: %v)", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(reading server log: %v)", err)
	}
	from := max(p.logFrom, fi.Size()-serverLogTail)
	b, err := io.ReadAll(io.NewSectionReader(f, from, fi.Size()-from))
	if err != nil {
		return fmt.Sprintf("(reading server log: %v)", err)
	}
	return strings.TrimSpace(string(b))
}

// addrInUse reports whether this run's log says its port was taken, the
// one start failure worth retrying on another port.
func (p *serverProcess) addrInUse() bool {
	return strings.Contains(strings.ToLower(p.log()), "address already in use")
}

// serverError describes a failed start: what went wrong, how the process
// ended if it did, and the end of its log.
func (p *serverProcess) serverError(what string, cause error) error {
	status := "still running"
	if p.exited() {
		status = fmt.Sprintf("exited: %v", p.waitErr)
		if p.waitErr == nil {
			status = "exited: status 0"
		}
	}
	return fmt.Errorf("%s: %w (%s); server log %s ends:\n%s", what, cause, status, p.logPath, p.log())
}
