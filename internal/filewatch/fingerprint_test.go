package filewatch

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spacegate/spacegate/internal/safefile"
)

func TestFingerprint(t *testing.T) {
	small := []byte("-----BEGIN CERTIFICATE-----\n")
	large := bytes.Repeat([]byte("x"), hashLimit)
	later := time.Now().Add(time.Hour).Truncate(time.Second)

	tests := []struct {
		name    string
		initial []byte // nil: absent
		change  func(t *testing.T, path string)
		same    bool
	}{
		{
			name:    "small file touched",
			initial: small,
			change:  func(t *testing.T, path string) { chtimes(t, path, later) },
			same:    true,
		},
		{
			name:    "small file same size same mtime new bytes",
			initial: small,
			change: func(t *testing.T, path string) {
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				write(t, path, "-----BEGIN CERTIFICATE-----\t")
				chtimes(t, path, fi.ModTime())
			},
			same: false,
		},
		{
			name:    "large file touched",
			initial: large,
			change:  func(t *testing.T, path string) { chtimes(t, path, later) },
			same:    false,
		},
		{
			name:    "large file replaced by identical copy",
			initial: large,
			change: func(t *testing.T, path string) {
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				replace(t, path, string(large))
				chtimes(t, path, fi.ModTime())
			},
			same: false, // new inode
		},
		{
			name:    "absent stays absent",
			initial: nil,
			change:  func(t *testing.T, path string) {},
			same:    true,
		},
		{
			name:    "appears empty",
			initial: nil,
			change:  func(t *testing.T, path string) { write(t, path, "") },
			same:    false,
		},
		{
			name:    "dangling symlink is absent",
			initial: nil,
			change: func(t *testing.T, path string) {
				if err := os.Symlink("nowhere", path); err != nil {
					t.Fatal(err)
				}
			},
			same: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "f")
			if tt.initial != nil {
				if err := os.WriteFile(path, tt.initial, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			before := fingerprintOf(path)
			tt.change(t, path)
			after := fingerprintOf(path)
			if same := before == after; same != tt.same {
				t.Errorf("fingerprints equal = %v, want %v\nbefore %+v\nafter  %+v", same, tt.same, before, after)
			}
		})
	}
}

func TestFingerprintParentIsFile(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "file")
	write(t, file, "x")
	if fp := fingerprintOf(filepath.Join(file, "child")); fp != (fingerprint{}) {
		t.Errorf("path under a regular file: %+v, want absent", fp)
	}
}

func chtimes(t *testing.T, path string, tm time.Time) {
	t.Helper()
	if err := os.Chtimes(path, tm, tm); err != nil {
		t.Fatal(err)
	}
}

// TestFingerprintNeverBlocks: a watched path that is, or becomes, a FIFO
// or a link to /dev/zero is fingerprinted at once (os.Open of a FIFO
// without a writer blocks; /dev/zero never ends), and hashFile refuses a
// FIFO that replaced a file after its Stat.
func TestFingerprintNeverBlocks(t *testing.T) {
	dir := t.TempDir()
	fifo, zero := filepath.Join(dir, "fifo"), filepath.Join(dir, "zero")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		f    func() error
	}{
		{"fingerprint of a FIFO", func() error { fingerprintOf(fifo); return nil }},
		{"fingerprint of /dev/zero", func() error { fingerprintOf(zero); return nil }},
		{"hash of a FIFO", func() error { _, _, err := hashFile(fifo); return err }},
		{"hash of /dev/zero", func() error { _, _, err := hashFile(zero); return err }},
	} {
		done := make(chan error, 1)
		go func() { done <- tt.f() }()
		select {
		case err := <-done:
			if strings.HasPrefix(tt.name, "hash") && !errors.Is(err, safefile.ErrNotRegular) {
				t.Errorf("%s: %v, want an error matching safefile.ErrNotRegular", tt.name, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: still blocked after 5s", tt.name)
		}
	}
	if a, b := fingerprintOf(fifo), fingerprintOf(fifo); a != b || !a.exists || a.hashed {
		t.Errorf("fingerprint of an unchanged FIFO: %+v then %+v; want equal, existing, not hashed", a, b)
	}
}
