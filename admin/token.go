package admin

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"syscall"

	"github.com/spacegate/spacegate/internal/safefile"
)

// ReadTokenFile reads the bearer token of admin.token_file, for the gate
// and for the CLI that talks to it: a regular file (after links) of at
// most safefile.AdminToken's size, opened without blocking so that a FIFO
// cannot wedge a reload. One trailing newline (\n or \r\n) is dropped; the
// rest must be printable ASCII without spaces, as an HTTP header carries
// it. Like libpq's key files, it must not be readable by others: 0600 or
// less, or 0640 or less when owned by root (Kubernetes mounts Secrets that
// way with fsGroup).
func ReadTokenFile(path string) ([]byte, error) {
	f, _, err := safefile.Open(path, safefile.AdminToken)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s does not exist", path)
		}
		return nil, err
	}
	defer f.Close()
	// The permissions of the file that was opened, not of the path now.
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := checkTokenPerm(path, fi); err != nil {
		return nil, err
	}
	max := safefile.AdminToken.Max
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes: a token is one line", path, max)
	}
	tok := data
	if n := len(tok); n > 0 && tok[n-1] == '\n' {
		tok = tok[:n-1]
		if n := len(tok); n > 0 && tok[n-1] == '\r' {
			tok = tok[:n-1]
		}
	}
	if len(tok) == 0 {
		return nil, fmt.Errorf("%s is empty: write the token in it (such as: openssl rand -hex 32)", path)
	}
	for _, b := range tok {
		if b <= ' ' || b > '~' {
			return nil, fmt.Errorf("%s holds a space, control or non-ASCII character: a token is one line of printable ASCII", path)
		}
	}
	return tok, nil
}

// checkTokenPerm refuses a token file that others can read or change.
func checkTokenPerm(path string, fi fs.FileInfo) error {
	perm := fi.Mode().Perm()
	st, ok := fi.Sys().(*syscall.Stat_t)
	if ok && st.Uid == 0 {
		if perm&0o137 != 0 {
			return fmt.Errorf("%s has permissions %04o: a token file owned by root must be u=rw,g=r (0640) or less", path, perm)
		}
		return nil
	}
	if perm&0o077 != 0 {
		return fmt.Errorf("%s has permissions %04o: a token file must be u=rw (0600) or less (chmod 600 %s)", path, perm, path)
	}
	return nil
}
