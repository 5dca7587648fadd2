package atomicfile

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

func TestWriteFile(t *testing.T) {
	tests := []struct {
		name string
		old  string // existing content; "" for none
		data string
		perm os.FileMode
	}{
		{name: "new file", data: "hello", perm: 0o644},
		{name: "replace", old: "old content", data: "new", perm: 0o600},
		{name: "empty", old: "x", data: "", perm: 0o640},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "f")
			if tt.old != "" {
				if err := os.WriteFile(path, []byte(tt.old), 0o666); err != nil {
					t.Fatal(err)
				}
			}
			if err := WriteFile(path, []byte(tt.data), tt.perm); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.data {
				t.Errorf("content = %q, want %q", got, tt.data)
			}
			fi, _ := os.Stat(path)
			if fi.Mode().Perm() != tt.perm {
				t.Errorf("mode = %#o, want %#o", fi.Mode().Perm(), tt.perm)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Errorf("directory holds %d entries, want only the file (temporary file left behind?)", len(entries))
			}
		})
	}
}

func TestWriteFileMissingDir(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no", "such", "f")
	if err := WriteFile(path, []byte("x"), 0o644); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("WriteFile into a missing directory: %v, want os.ErrNotExist", err)
	}
}

func TestWriteFileExclusive(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ca.key")
	if err := WriteFileExclusive(path, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileExclusive(path, []byte("two"), 0o600); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second write: %v, want fs.ErrExist", err)
	}
	if got, _ := os.ReadFile(path); string(got) != "one" {
		t.Errorf("file holds %q, want the first write", got)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d entries, want 1", len(entries))
	}
}

// TestLockSerialises runs read-modify-write cycles from many goroutines,
// each through its own lock file handle as a separate process would: without
// the lock, increments are lost.
func TestLockSerialises(t *testing.T) {
	dir := t.TempDir()
	lock, counter := filepath.Join(dir, ".lock"), filepath.Join(dir, "n")
	if err := os.WriteFile(counter, []byte("0"), 0o644); err != nil {
		t.Fatal(err)
	}
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			unlock, err := Lock(context.Background(), lock)
			if err != nil {
				errs <- err
				return
			}
			defer unlock()
			data, err := os.ReadFile(counter)
			if err != nil {
				errs <- err
				return
			}
			v, _ := strconv.Atoi(string(data))
			time.Sleep(time.Millisecond) // widen the window a lost update needs
			errs <- WriteFile(counter, []byte(strconv.Itoa(v+1)), 0o644)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	data, _ := os.ReadFile(counter)
	if string(data) != strconv.Itoa(n) {
		t.Errorf("counter = %s after %d locked increments, want %d", data, n, n)
	}
	fi, err := os.Stat(lock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("lock file mode = %#o, want 0600", fi.Mode().Perm())
	}
}

func TestLockTimeout(t *testing.T) {
	lock := filepath.Join(t.TempDir(), ".lock")
	unlock, err := Lock(context.Background(), lock)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := Lock(ctx, lock); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Lock of a held lock: %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Lock waited %v past its 50ms deadline", d)
	}
}
