package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spacegate/spacegate/internal/atomicfile"
	"github.com/spacegate/spacegate/tlsconf"
)

// auditEntry is one line of pki.dir/audit.log: who did what, when, to
// which route and object. Never a key.
type auditEntry struct {
	Time        time.Time `json:"time"`
	User        string    `json:"user"`
	SudoUser    string    `json:"sudo_user,omitempty"` // the person behind sudo
	Action      string    `json:"action"`              // ca.init, ca.rotate, ca.prune, cert.create, cert.download, cert.revoke, cert.rotate, ip_rule.create, ip_rule.delete
	Route       string    `json:"route,omitempty"`
	Routes      []string  `json:"routes,omitempty"`
	ID          string    `json:"id,omitempty"`
	CIDR        string    `json:"cidr,omitempty"`
	Description string    `json:"description,omitempty"`
	Serial      string    `json:"serial,omitempty"`
	Name        string    `json:"name,omitempty"`
	Replaces    string    `json:"replaces,omitempty"`
	ExpiresAt   time.Time `json:"expires_at,omitzero"`
	Subject     string    `json:"subject,omitempty"` // of a CA
	Dir         string    `json:"dir,omitempty"`     // where a bundle was written
	Via         string    `json:"via,omitempty"`     // "quickstart" when not a command of its own
}

// audit appends e to the audit log in pkiDir, under a lock on the log so
// that lines of concurrent commands never interleave. The action has
// already happened, so a failure says so.
func audit(ctx context.Context, pkiDir string, e auditEntry) error {
	e.Time = time.Now().UTC()
	e.User, e.SudoUser = osUser()
	line, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if err := appendAudit(ctx, filepath.Join(pkiDir, tlsconf.AuditLogName), append(line, '\n')); err != nil {
		return fmt.Errorf("%s done, but the audit log could not be written: %w", e.Action, err)
	}
	return nil
}

func appendAudit(ctx context.Context, path string, line []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	unlock, err := atomicfile.Lock(ctx, path)
	if err != nil {
		return err
	}
	defer unlock()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(line); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// osUser returns the name of the user running the command and, under sudo,
// the user who ran sudo.
func osUser() (name, sudo string) {
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	} else if n := os.Getenv("USER"); n != "" {
		name = n
	} else {
		name = "uid " + strconv.Itoa(os.Getuid())
	}
	return name, os.Getenv("SUDO_USER")
}
