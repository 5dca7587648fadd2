package safefile

import (
	"bytes"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	path := func(name string) string { return filepath.Join(dir, name) }
	small := Limit{Kind: "rules file", Max: 16}
	write := func(name string, size int) {
		if err := os.WriteFile(path(name), bytes.Repeat([]byte{'x'}, size), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ok", 10)
	write("exact", 16)
	write("over", 17)
	write("empty", 0)
	write("mib", 1<<20+1)
	if err := os.Symlink(path("ok"), path("link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/zero", path("zero")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(path("fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(path("fifo"), path("fifolink")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path("dir"), 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", path("sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	for _, tt := range []struct {
		name    string
		path    string
		lim     Limit
		want    int      // bytes read, when no error
		wantErr error    // matched with errors.Is
		msg     []string // each in the error
	}{
		{name: "regular", path: path("ok"), lim: small, want: 10},
		{name: "at the limit", path: path("exact"), lim: small, want: 16},
		{name: "empty", path: path("empty"), lim: small, want: 0},
		{name: "symlink to a regular file", path: path("link"), lim: small, want: 10},
		{name: "one byte over", path: path("over"), lim: small, wantErr: ErrTooLarge,
			msg: []string{path("over"), "is 17 bytes; the limit for a rules file is 16 bytes"}},
		{name: "large", path: path("over"), lim: Limit{"config file", 1}, wantErr: ErrTooLarge,
			msg: []string{"config file " + path("over"), "the limit for a config file is 1 bytes"}},
		{name: "just over a round limit", path: path("mib"), lim: Limit{"upstream CA file", 1 << 20}, wantErr: ErrTooLarge,
			msg: []string{"is 1048577 bytes; the limit for an upstream CA file is 1 MiB"}},
		// /proc files say they are empty: only the read tells.
		{name: "grows while read", path: "/proc/self/status", lim: small, wantErr: ErrTooLarge,
			msg: []string{"/proc/self/status grew past 16 bytes while being read"}},
		{name: "symlink to /dev/zero", path: path("zero"), lim: Rules, wantErr: ErrNotRegular,
			msg: []string{"rules file " + path("zero") + " is a character device, not a regular file"}},
		{name: "FIFO", path: path("fifo"), lim: small, wantErr: ErrNotRegular,
			msg: []string{path("fifo"), "is a FIFO (named pipe)"}},
		{name: "symlink to a FIFO", path: path("fifolink"), lim: small, wantErr: ErrNotRegular,
			msg: []string{path("fifolink"), "is a FIFO (named pipe)"}},
		{name: "directory", path: path("dir"), lim: small, wantErr: ErrNotRegular,
			msg: []string{path("dir"), "is a directory"}},
		{name: "socket", path: path("sock"), lim: small, wantErr: ErrNotRegular,
			msg: []string{path("sock"), "is a socket"}},
		{name: "missing", path: path("missing"), lim: small, wantErr: fs.ErrNotExist,
			msg: []string{path("missing")}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if strings.HasPrefix(tt.path, "/proc/") && runtime.GOOS != "linux" {
				t.Skip("no /proc on " + runtime.GOOS)
			}
			type result struct {
				data []byte
				err  error
			}
			done := make(chan result, 1)
			go func() {
				data, err := ReadFile(tt.path, tt.lim)
				done <- result{data, err}
			}()
			var r result
			select {
			case r = <-done:
			case <-time.After(5 * time.Second):
				t.Fatalf("ReadFile(%s) still blocked after 5s", tt.path)
			}
			if tt.wantErr == nil {
				if r.err != nil {
					t.Fatalf("ReadFile(%s): %v", tt.path, r.err)
				}
				if len(r.data) != tt.want {
					t.Errorf("ReadFile(%s) read %d bytes, want %d", tt.path, len(r.data), tt.want)
				}
				return
			}
			if !errors.Is(r.err, tt.wantErr) {
				t.Fatalf("ReadFile(%s) = %d bytes, %v; want an error matching %v", tt.path, len(r.data), r.err, tt.wantErr)
			}
			for _, m := range tt.msg {
				if !strings.Contains(r.err.Error(), m) {
					t.Errorf("error %q does not say %q", r.err, m)
				}
			}
		})
	}
}

func TestFormatSize(t *testing.T) {
	for _, tt := range []struct {
		n    int64
		want string
	}{
		{0, "0 bytes"},
		{1023, "1023 bytes"},
		{1024, "1 KiB"},
		{1536, "1.5 KiB"},
		{16 << 20, "16 MiB"},
		{1288490189, "1.2 GiB"},
		{1 << 62, "4 EiB"},
		{4<<20 + 1, "4 MiB"},
	} {
		if got := formatSize(tt.n); got != tt.want {
			t.Errorf("formatSize(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
}
