package testenv

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Threads returns the number of OS threads of this process, from
// /proc/self/status; ok is false where there is no such file.
func Threads() (n int, ok bool) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, found := strings.CutPrefix(line, "Threads:"); found {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			return n, err == nil
		}
	}
	return 0, false
}

// PeakThreads samples the process's OS threads every 2ms until the
// returned function is called, which returns the most it saw. It skips t
// where the count cannot be read (no /proc).
func PeakThreads(t testing.TB) (stop func() int) {
	t.Helper()
	first, ok := Threads()
	if !ok {
		t.Skip("counts threads in /proc/self/status")
	}
	peak := first
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			if n, ok := Threads(); ok {
				peak = max(peak, n)
			}
			select {
			case <-done:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	})
	return func() int {
		close(done)
		wg.Wait()
		return peak
	}
}
