package admin

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spacegate/spacegate/internal/safefile"
)

func TestReadTokenFile(t *testing.T) {
	dir := t.TempDir()
	type file struct {
		data  string
		perm  os.FileMode
		owner int // uid to chown to; -1 keeps ours
	}
	for _, tc := range []struct {
		name string
		file file
		want string // the token, or with err the problem
		err  bool
	}{
		{"newline", file{"s3cret-token\n", 0o600, -1}, "s3cret-token", false},
		{"crlf", file{"s3cret-token\r\n", 0o600, -1}, "s3cret-token", false},
		{"no newline", file{"s3cret-token", 0o400, -1}, "s3cret-token", false},
		{"empty", file{"", 0o600, -1}, "is empty", true},
		{"only a newline", file{"\n", 0o600, -1}, "is empty", true},
		{"two lines", file{"one\ntwo\n", 0o600, -1}, "printable ASCII", true},
		{"trailing blank line", file{"tok\n\n", 0o600, -1}, "printable ASCII", true},
		{"space", file{"my token\n", 0o600, -1}, "printable ASCII", true},
		{"too large", file{strings.Repeat("a", int(safefile.AdminToken.Max)+1), 0o600, -1}, "the limit for an admin token file is 4 KiB", true},
		{"world readable", file{"tok\n", 0o644, -1}, "has permissions 0644", true},
		{"group writable", file{"tok\n", 0o660, -1}, "has permissions 0660", true},
		{"group readable, not root's", file{"tok\n", 0o640, 65534}, "must be u=rw (0600) or less", true},
		{"group readable, root's", file{"tok\n", 0o640, 0}, "tok", false},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
		if err := os.WriteFile(path, []byte(tc.file.data), tc.file.perm); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, tc.file.perm); err != nil { // past the umask
			t.Fatal(err)
		}
		if tc.file.owner >= 0 {
			if os.Geteuid() != 0 {
				t.Logf("%s: skipped, needs root to chown", tc.name)
				continue
			}
			if err := os.Chown(path, tc.file.owner, -1); err != nil {
				t.Fatal(err)
			}
		}
		tok, err := ReadTokenFile(path)
		switch {
		case tc.err && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %q, %v; want an error with %q", tc.name, tok, err, tc.want)
		case !tc.err && (err != nil || string(tok) != tc.want):
			t.Errorf("%s: %q, %v; want %q", tc.name, tok, err, tc.want)
		}
	}

	link := filepath.Join(dir, "link")
	if err := os.Symlink(filepath.Join(dir, "newline"), link); err != nil {
		t.Fatal(err)
	}
	if tok, err := ReadTokenFile(link); err != nil || string(tok) != "s3cret-token" {
		t.Errorf("through a link: %q, %v", tok, err)
	}
	// Neither a directory nor a FIFO is a token; the FIFO, with no writer,
	// must not block the read.
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for p, kind := range map[string]string{dir: "a directory", fifo: "a FIFO", "/dev/zero": "a character device"} {
		done := make(chan error, 1)
		go func() { _, err := ReadTokenFile(p); done <- err }()
		select {
		case err := <-done:
			if want := " is " + kind; err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %v, want %q", p, err, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("reading %s blocked", p)
		}
	}
	if _, err := ReadTokenFile(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing file: %v", err)
	}
}
