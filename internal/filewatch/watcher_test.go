package filewatch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	testDebounce = 20 * time.Millisecond
	// waitFor bounds every wait for a signal that must come.
	waitFor = 5 * time.Second
	// quiet is how long a test waits to show that no signal comes.
	quiet = 300 * time.Millisecond
)

// start returns a Watcher on paths with polling off, so that only file
// system notifications can produce a signal, and closes it when the test
// ends.
func start(t testing.TB, paths ...string) *Watcher {
	t.Helper()
	return startWith(t, Options{Debounce: testDebounce, Poll: -1}, true, paths...)
}

func startWith(t testing.TB, opts Options, notify bool, paths ...string) *Watcher {
	t.Helper()
	w, err := newWatcher(paths, opts, notify)
	if err != nil {
		t.Fatalf("newWatcher(%q): %v", paths, err)
	}
	t.Cleanup(func() {
		if err := w.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		for {
			select {
			case err := <-w.Errors():
				t.Logf("watcher error: %v", err)
			default:
				return
			}
		}
	})
	return w
}

// waitSignal fails the test unless a signal arrives within waitFor.
func waitSignal(t testing.TB, w *Watcher, what string) {
	t.Helper()
	timer := time.NewTimer(waitFor)
	defer timer.Stop()
	select {
	case <-w.Changes():
	case <-timer.C:
		t.Fatalf("%s: no signal within %v", what, waitFor)
	}
}

// noSignal fails the test if a signal arrives within quiet.
func noSignal(t testing.TB, w *Watcher, what string) {
	t.Helper()
	timer := time.NewTimer(quiet)
	defer timer.Stop()
	select {
	case <-w.Changes():
		t.Fatalf("%s: unexpected signal", what)
	case <-timer.C:
	}
}

// countSignals waits for a first signal, then counts signals until none
// arrives for quiet.
func countSignals(t testing.TB, w *Watcher) int {
	t.Helper()
	waitSignal(t, w, "first signal")
	n := 1
	for {
		timer := time.NewTimer(quiet)
		select {
		case <-w.Changes():
			timer.Stop()
			n++
		case <-timer.C:
			return n
		}
	}
}

func write(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// replace writes content to a temporary file beside path and renames it
// over path, as editors and atomic-write helpers do.
func replace(t testing.TB, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	write(t, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestSignals(t *testing.T) {
	tests := []struct {
		name   string
		before func(t *testing.T, dir, path string) // before the Watcher starts
		change func(t *testing.T, dir, path string)
		signal bool
	}{
		{
			name:   "in-place write",
			change: func(t *testing.T, dir, path string) { write(t, path, "version two") },
			signal: true,
		},
		{
			name: "in-place rewrite with same size and mtime",
			change: func(t *testing.T, dir, path string) {
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				write(t, path, "version 0ne") // same length as "version one"
				if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
					t.Fatal(err)
				}
			},
			signal: true,
		},
		{
			name:   "rename over",
			change: func(t *testing.T, dir, path string) { replace(t, path, "version two") },
			signal: true,
		},
		{
			name: "mv another file over",
			before: func(t *testing.T, dir, path string) {
				write(t, filepath.Join(dir, "other.pem"), "other")
			},
			change: func(t *testing.T, dir, path string) {
				if err := os.Rename(filepath.Join(dir, "other.pem"), path); err != nil {
					t.Fatal(err)
				}
			},
			signal: true,
		},
		{
			name: "delete",
			change: func(t *testing.T, dir, path string) {
				if err := os.Remove(path); err != nil {
					t.Fatal(err)
				}
			},
			signal: true,
		},
		{
			name: "chmod unreadable",
			change: func(t *testing.T, dir, path string) {
				if err := os.Chmod(path, 0o000); err != nil {
					t.Fatal(err)
				}
			},
			signal: true,
		},
		{
			name: "unrelated file in same directory",
			change: func(t *testing.T, dir, path string) {
				write(t, filepath.Join(dir, "unrelated.txt"), "noise")
				replace(t, filepath.Join(dir, "unrelated.txt"), "more noise")
			},
			signal: false,
		},
		{
			// Files below 1 MiB are compared by content, so a new mtime
			// alone is not a change.
			name: "touch with identical content",
			change: func(t *testing.T, dir, path string) {
				later := time.Now().Add(time.Hour)
				if err := os.Chtimes(path, later, later); err != nil {
					t.Fatal(err)
				}
			},
			signal: false,
		},
		{
			name:   "rename over with identical content",
			change: func(t *testing.T, dir, path string) { replace(t, path, "version one") },
			signal: false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "cert.pem")
			write(t, path, "version one")
			if tt.before != nil {
				tt.before(t, dir, path)
			}
			w := start(t, path)
			tt.change(t, dir, path)
			if tt.signal {
				waitSignal(t, w, tt.name)
			} else {
				noSignal(t, w, tt.name)
			}
		})
	}
}

func TestDeleteThenRecreate(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "key.pem")
	write(t, path, "old key")
	w := start(t, path)

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	waitSignal(t, w, "delete")
	write(t, path, "new key")
	waitSignal(t, w, "re-create")
	write(t, path, "newer key")
	waitSignal(t, w, "write after re-create")
}

func TestMissingFileAppears(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "crl.pem")
	w := start(t, path)
	noSignal(t, w, "absent file")
	write(t, path, "crl")
	waitSignal(t, w, "file created")
}

// TestKubernetesSwap builds the layout the kubelet gives a ConfigMap or
// Secret volume and updates it the way the kubelet does.
func TestKubernetesSwap(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	names := []string{"tls.crt", "tls.key"}

	// publish writes a timestamped directory and points ..data at it
	// through ..data_tmp, then removes the previous directory.
	publish := func(stamp, content, previous string) {
		ts := filepath.Join(dir, stamp)
		if err := os.Mkdir(ts, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			write(t, filepath.Join(ts, n), content+" "+n)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(stamp, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		if previous != "" {
			if err := os.RemoveAll(filepath.Join(dir, previous)); err != nil {
				t.Fatal(err)
			}
		}
	}

	publish("..2026_11_22_10_00_00.123456789", "v1", "")
	var paths []string
	for _, n := range names {
		if err := os.Symlink(filepath.Join("..data", n), filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, filepath.Join(dir, n))
	}
	w := start(t, paths...)

	publish("..2026_11_22_10_05_00.234567890", "v2", "..2026_11_22_10_00_00.123456789")
	if n := countSignals(t, w); n > 2 {
		t.Errorf("first swap: %d signals, want 1 or 2", n)
	}
	publish("..2026_11_22_10_10_00.345678901", "v3", "..2026_11_22_10_05_00.234567890")
	waitSignal(t, w, "second swap")

	got, err := os.ReadFile(paths[0])
	if err != nil || string(got) != "v3 tls.crt" {
		t.Fatalf("layout broken: read %q, %v", got, err)
	}
}

func TestBurst(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "config.yaml")
	write(t, path, "v0")
	w := startWith(t, Options{Poll: -1}, true, path) // default debounce

	for i := range 50 {
		write(t, path, fmt.Sprintf("v%d", i+1))
	}
	if n := countSignals(t, w); n > 2 {
		t.Errorf("50 writes gave %d signals, want 1 or 2", n)
	}
}

func TestSetPaths(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a := filepath.Join(dir, "a.pem")
	b := filepath.Join(t.TempDir(), "sub", "b.pem") // another, not yet existing, directory
	write(t, a, "a1")
	w := start(t, a)

	if err := os.MkdirAll(filepath.Dir(b), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, b, "b1")
	if err := w.SetPaths([]string{a, b}); err != nil {
		t.Fatal(err)
	}
	noSignal(t, w, "SetPaths adding an existing file")
	write(t, b, "b2")
	waitSignal(t, w, "write to added file")

	// A change to a path kept across SetPaths is still reported.
	write(t, a, "a2")
	if err := w.SetPaths([]string{b, a}); err != nil {
		t.Fatal(err)
	}
	waitSignal(t, w, "write to kept file just before SetPaths")

	if err := w.SetPaths([]string{b}); err != nil {
		t.Fatal(err)
	}
	write(t, a, "a3")
	noSignal(t, w, "write to dropped file")

	if err := w.SetPaths([]string{""}); err == nil {
		t.Error("SetPaths with an empty path: no error")
	}
}

func TestMissingDirectory(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	dir := filepath.Join(root, "etc", "spacegate", "tls")
	path := filepath.Join(dir, "ca.pem")
	w := start(t, path)

	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	noSignal(t, w, "directory created, file still absent")
	write(t, path, "ca1")
	waitSignal(t, w, "file created in new directory")
	write(t, path, "ca2")
	waitSignal(t, w, "file written in new directory")

	if err := os.RemoveAll(filepath.Join(root, "etc")); err != nil {
		t.Fatal(err)
	}
	waitSignal(t, w, "directory removed")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, path, "ca3")
	waitSignal(t, w, "directory and file re-created")
	write(t, path, "ca4")
	waitSignal(t, w, "file written in re-created directory")

	// Removed and re-created within one debounce: the kernel dropped the
	// watch on the old directory, and the Watcher must notice although the
	// path is the same.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, path, "ca5")
	waitSignal(t, w, "directory swapped within one debounce")
	write(t, path, "ca6")
	waitSignal(t, w, "file written in swapped directory")
}

func TestPoll(t *testing.T) {
	tests := []struct {
		name   string
		poll   time.Duration
		signal bool
	}{
		{"poll catches change without notifications", 50 * time.Millisecond, true},
		{"nothing without notifications or poll", -1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "cert.pem")
			write(t, path, "one")
			w := startWith(t, Options{Debounce: testDebounce, Poll: tt.poll}, false, path)
			write(t, path, "two")
			if tt.signal {
				waitSignal(t, w, tt.name)
				noSignal(t, w, "poll after the change was seen")
			} else {
				noSignal(t, w, tt.name)
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	t.Parallel()
	if _, err := New([]string{"a", ""}, Options{}); err == nil {
		t.Error("New with an empty path: no error")
	}
}

func TestDuplicatePaths(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "x.pem")
	w := start(t, path, path, filepath.Join(dir, ".", "x.pem"))
	w.mu.Lock()
	got := slices.Clone(w.paths)
	w.mu.Unlock()
	if want := []string{path}; !slices.Equal(got, want) {
		t.Errorf("paths = %q, want %q", got, want)
	}
}

// TestClose is not parallel so that goleak can see every goroutine of the
// closed Watcher gone.
func TestClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cert.pem")
	write(t, path, "one")
	w, err := New([]string{path}, Options{Debounce: testDebounce, Poll: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := w.SetPaths([]string{path}); !errors.Is(err, ErrClosed) {
		t.Errorf("SetPaths after Close: %v, want ErrClosed", err)
	}
	goleak.VerifyNone(t)
	write(t, path, "two")
	noSignal(t, w, "write after Close")
}

func BenchmarkChangeLatency(b *testing.B) {
	path := filepath.Join(b.TempDir(), "cert.pem")
	write(b, path, "initial")
	w := startWith(b, Options{Debounce: time.Millisecond, Poll: -1}, true, path)

	var lat []time.Duration
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		start := time.Now()
		replace(b, path, fmt.Sprintf("content %d", i))
		waitSignal(b, w, "write")
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "µs-median")
		b.ReportMetric(float64(lat[len(lat)*9/10].Microseconds()), "µs-p90")
	}
}

// TestSymlinkIntoOtherDirectory covers certbot's layout, where live/ holds
// symlinks into archive/: a write to the target is a change of the link.
func TestSymlinkIntoOtherDirectory(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	archive := filepath.Join(root, "archive")
	live := filepath.Join(root, "live")
	for _, d := range []string{archive, live} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(t, filepath.Join(archive, "cert1.pem"), "cert1")
	write(t, filepath.Join(archive, "cert2.pem"), "cert2")
	link := filepath.Join(live, "cert.pem")
	if err := os.Symlink("../archive/cert1.pem", link); err != nil {
		t.Fatal(err)
	}
	w := start(t, link)

	write(t, filepath.Join(archive, "cert1.pem"), "cert1 rewritten")
	waitSignal(t, w, "in-place write to symlink target")

	// Re-point the link as certbot does: new symlink, rename over.
	if err := os.Symlink("../archive/cert2.pem", link+".new"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(link+".new", link); err != nil {
		t.Fatal(err)
	}
	waitSignal(t, w, "symlink re-pointed")
	write(t, filepath.Join(archive, "cert1.pem"), "old target rewritten")
	noSignal(t, w, "write to former target")
}
