package testenv

import (
	"os"
	"syscall"
	"testing"
)

// A HostileFile is a way a file the gate reads can be one it must not
// read: it would block the reader (a FIFO), never end (/dev/zero), not be
// a file at all, or be over the limit for its kind.
type HostileFile struct {
	Name string
	// Plant puts the hostile file at path; max is the size limit of the
	// kind of file that path stands for.
	Plant func(t testing.TB, path string, max int64)
	// Problem is what the refusal says of it, after the file's path.
	Problem string
}

// HostileFiles returns every way of HostileFile.
func HostileFiles() []HostileFile {
	return []HostileFile{
		{"FIFO", func(t testing.TB, path string, _ int64) {
			if err := syscall.Mkfifo(path, 0o644); err != nil {
				t.Fatal(err)
			}
		}, "is a FIFO (named pipe), not a regular file"},
		{"symlink to /dev/zero", func(t testing.TB, path string, _ int64) {
			if err := os.Symlink("/dev/zero", path); err != nil {
				t.Fatal(err)
			}
		}, "is a character device, not a regular file"},
		{"directory", func(t testing.TB, path string, _ int64) {
			if err := os.Mkdir(path, 0o755); err != nil {
				t.Fatal(err)
			}
		}, "is a directory, not a regular file"},
		{"one byte over the limit", func(t testing.TB, path string, max int64) {
			f, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			// Sparse: the size is what counts, not the disk.
			if err := f.Truncate(max + 1); err != nil {
				t.Fatal(err)
			}
		}, "; the limit for a"}, // "is 4194305 bytes; the limit for a config file is 4 MiB"
	}
}
