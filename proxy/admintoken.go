package proxy

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"syscall"

	"github.com/spacegate/spacegate/internal/safefile"
)

// validate checks admin.listen, and that an address other than loopback
// comes with a token: /v1/status lists every live session and pprof shows
// the process's memory.
func (a *AdminConfig) validate(v *validator) {
	if a.Listen == "" {
		return
	}
	if err := checkHostPort(adminListenAddr(a.Listen)); err != nil {
		v.addf([]any{"admin", "listen"}, "admin.listen: %v", err)
		return
	}
	if a.TokenFile == "" && !isLoopbackListen(a.Listen) {
		v.addf([]any{"admin", "listen"}, "admin.listen %s is not a loopback address, and the admin endpoint shows every live session: set admin.token_file (a bearer token) to serve it there, or listen on 127.0.0.1", a.Listen)
	}
}

// adminListenAddr is the address the admin endpoint binds: an empty host
// (":9187") means 127.0.0.1, private unless said otherwise.
func adminListenAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err == nil && host == "" {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return listen
}

// isLoopbackListen reports whether a listen address binds loopback only:
// an empty host, 127.0.0.0/8 or ::1. A host name, even localhost, is not:
// what it resolves to is not in the config.
func isLoopbackListen(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// loadAdminToken reads admin.token_file; nil when there is none.
func (c *Config) loadAdminToken() ([]byte, error) {
	if c.Admin.TokenFile == "" {
		return nil, nil
	}
	tok, err := readTokenFile(c.Admin.TokenFile)
	if err != nil {
		return nil, c.problemAt([]any{"admin", "token_file"}, "admin.token_file: %v", err)
	}
	return tok, nil
}

// ReadTokenFile reads a bearer token file as the gate does, for the CLI.
func ReadTokenFile(path string) ([]byte, error) { return readTokenFile(path) }

// readTokenFile reads a bearer token: a regular file (after links) of at
// most safefile.AdminToken's size, opened without blocking so that a FIFO
// cannot wedge a reload. One trailing newline (\n or \r\n) is dropped; the
// rest must be printable ASCII without spaces, as an HTTP header carries
// it. Like libpq's key files, it must not be readable by others: 0600 or
// less, or 0640 or less when owned by root (Kubernetes mounts Secrets that
// way with fsGroup).
func readTokenFile(path string) ([]byte, error) {
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
