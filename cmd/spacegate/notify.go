package main

import (
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// notifySocketEnv names the datagram socket of the service manager
// (systemd with Type=notify or Type=notify-reload; also s6, supervisord
// plugins and others that speak sd_notify).
const notifySocketEnv = "NOTIFY_SOCKET"

// sdNotifyMessage returns the sd_notify(3) datagram that tells the service
// manager of state, one of the states proxy.Options.Notify is given, or ""
// for a state it does not know. monotonic is CLOCK_MONOTONIC now:
// systemd 253+ wants it with RELOADING=1 to tell this reload from an
// earlier one (Type=notify-reload); with Type=notify it is ignored.
func sdNotifyMessage(state string, monotonic time.Duration) string {
	switch state {
	case "ready":
		return daemon.SdNotifyReady + "\nSTATUS=serving"
	case "reloading":
		return fmt.Sprintf("%s\nMONOTONIC_USEC=%d\nSTATUS=reloading", daemon.SdNotifyReloading, monotonic.Microseconds())
	case "stopping":
		return daemon.SdNotifyStopping + "\nSTATUS=draining connections"
	}
	return ""
}

// sdNotifier returns a proxy.Options.Notify that passes the gate's states to
// the service manager over $NOTIFY_SOCKET, or nil when the variable is unset
// (the gate was not started by one). Failures to send are logged, once
// each, and never stop the gate. After "stopping" it sends nothing more, so
// that a reload racing with shutdown does not tell systemd the gate is
// ready again. The function is safe for concurrent use.
//
// Each message is one datagram on a fresh socket, as go-systemd sends it; a
// service manager that stops reading can delay a state change by as long as
// the kernel's unix socket buffer takes to fill, never forever, because
// systemd drains the socket from its event loop.
func sdNotifier(log *zap.Logger) func(state string) {
	if os.Getenv(notifySocketEnv) == "" {
		return nil
	}
	var (
		mu      sync.Mutex
		stopped bool
		failed  bool
	)
	return func(state string) {
		msg := sdNotifyMessage(state, monotonicNow())
		if msg == "" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		stopped = state == "stopping"
		if _, err := daemon.SdNotify(false, msg); err != nil && !failed {
			failed = true
			log.Warn("telling the service manager of a state change (sd_notify)",
				zap.String("state", state), zap.String(notifySocketEnv, os.Getenv(notifySocketEnv)), zap.Error(err))
		}
	}
}

// monotonicNow reads CLOCK_MONOTONIC, the clock systemd's MONOTONIC_USEC is
// on; Go's monotonic time readings are not exposed as a value.
func monotonicNow() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}
