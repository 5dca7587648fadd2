package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"path/filepath"
	"strings"

	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/tlsconf"
)

// env is what the admin commands (ca, certs, ip-rules) read from the
// config: the routes, the PKI directory and the admin endpoint.
type env struct {
	cfg    *config.Config
	path   string // the config file
	pkiDir string
	store  *tlsconf.CertStore
}

// loadEnv loads the config file named by the --config flag (or its
// defaults).
func loadEnv(configFlag string) (*env, error) {
	path := configPath(configFlag)
	cfg, err := config.Load(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, withHint(err, "pass the config file with --config FILE or $SPACEGATE_CONFIG")
		}
		return nil, problemsError(err)
	}
	dir := cfg.PKI.Dir
	if dir == "" {
		// Without pki.dir, the layout of the example config: pki/ beside
		// the config file.
		dir = filepath.Join(filepath.Dir(path), "pki")
	}
	return &env{cfg: cfg, path: path, pkiDir: dir, store: &tlsconf.CertStore{Dir: dir}}, nil
}

// route returns the route named name, or a user error listing the routes.
func (e *env) route(name string) (*config.Route, error) {
	var names []string
	for i := range e.cfg.Routes {
		r := &e.cfg.Routes[i]
		if r.Name == name {
			return r, nil
		}
		names = append(names, r.Name)
	}
	return nil, withHint(fmt.Errorf("unknown route %q", name), "the routes of %s are: %s", e.path, strings.Join(names, ", "))
}

// trustDomain is the host of the URI SANs of the client certificates.
func (e *env) trustDomain() string {
	if td := e.cfg.PKI.TrustDomain; td != "" {
		return td
	}
	return config.DefaultTrustDomain
}

// tls returns the effective TLS files of route r.
func (e *env) tls(r *config.Route) config.TLS { return r.EffectiveTLS(e.cfg.TLS) }

// adminURL returns the base URL of the gate's admin endpoint: flag if set,
// else from admin.listen, with a wildcard host replaced by loopback; "" if
// there is no admin endpoint.
func (e *env) adminURL(flag string) string {
	if flag != "" {
		return strings.TrimSuffix(flag, "/")
	}
	return adminURLFromListen(e.cfg.Admin.Listen)
}

func adminURLFromListen(listen string) string {
	if listen == "" {
		return ""
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return ""
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

// noCAHint turns ErrNoCA into a user error that says how to make the CA.
func (e *env) noCAHint(err error) error {
	if errors.Is(err, tlsconf.ErrNoCA) {
		return withHint(err, "create the space CA with: spacegate ca init --config %s", e.path)
	}
	return err
}

// samePath reports whether a and b name the same file.
func samePath(a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	aa, err1 := filepath.Abs(a)
	bb, err2 := filepath.Abs(b)
	return err1 == nil && err2 == nil && aa == bb
}

// pkiNotes writes a note for every route whose TLS files do not name the
// space CA bundle or CRL of pki.dir: changes made by ca and certs would not
// reach those routes.
func (e *env) pkiNotes(w io.Writer) {
	for i := range e.cfg.Routes {
		r := &e.cfg.Routes[i]
		t := e.tls(r)
		if !samePath(t.ClientCAFile, e.store.CAFile()) {
			fmt.Fprintf(w, "note: route %s trusts %s, not the space CA bundle %s\n", r.Name, t.ClientCAFile, e.store.CAFile())
		}
		if !samePath(t.CRLFile, e.store.CRLFile()) {
			crl := t.CRLFile
			if crl == "" {
				crl = "no CRL"
			}
			fmt.Fprintf(w, "note: route %s reads %s, not the space CA's CRL %s: revocations will not reach it\n", r.Name, crl, e.store.CRLFile())
		}
	}
}
