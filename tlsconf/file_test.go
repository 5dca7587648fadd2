package tlsconf

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rules.yaml")
	tests := []struct {
		data string
		perm fs.FileMode
	}{
		{"first", 0o600},
		{"second, replacing the first", 0o644},
		{"", 0o640},
	}
	for _, tt := range tests {
		if err := WriteFileAtomic(path, []byte(tt.data), tt.perm); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tt.data || fi.Mode().Perm() != tt.perm {
			t.Errorf("file holds %q with mode %v, want %q with %v", got, fi.Mode().Perm(), tt.data, tt.perm)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d entries, want 1 (temporary files left behind?)", len(entries))
	}
	if err := WriteFileAtomic(filepath.Join(dir, "missing", "x"), nil, 0o600); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("WriteFileAtomic into a missing directory: %v, want fs.ErrNotExist", err)
	}
}

func TestWriteFileExclusive(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ca.key")
	if err := writeFileExclusive(path, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := writeFileExclusive(path, []byte("two"), 0o600); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second write: %v, want fs.ErrExist", err)
	}
	if got, _ := os.ReadFile(path); string(got) != "one" {
		t.Errorf("file holds %q, want the first write", got)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d entries, want 1", len(entries))
	}
}
