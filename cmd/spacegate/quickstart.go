package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/spacegate/spacegate/allowlist"
	"github.com/spacegate/spacegate/internal/atomicfile"
	"github.com/spacegate/spacegate/tlsconf"
)

// The quickstart layout: a dev space CA, a server cert for the loopback
// names, one client bundle named the way the managed platform names it, a
// rules file per route that allows only loopback, and a config.
const (
	qsPostgresRoute  = "dev-postgres"
	qsRedisRoute     = "dev-redis"
	qsPostgresListen = "127.0.0.1:6432"
	qsRedisListen    = "127.0.0.1:6380"
	qsAdminListen    = "127.0.0.1:9187"
)

func newQuickstartCmd() *cobra.Command {
	var dir string
	var noServe bool
	cmd := &cobra.Command{
		Use:   "quickstart",
		Short: "Make a dev CA, certs, rules and config, then serve",
		Long: "Make a dev space CA, a server certificate for localhost, 127.0.0.1 and ::1, a client bundle\n" +
			"(postgresql.crt, postgresql.key, root.crt), rules that allow loopback only and a config with\n" +
			"a PostgreSQL route " + qsPostgresListen + " -> 127.0.0.1:5432 and a Redis route " + qsRedisListen + " -> 127.0.0.1:6379;\n" +
			"then serve it and print the psql and redis-cli lines that connect. Files that exist are reused.",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runQuickstart(cmd.Context(), cmd.OutOrStdout(), dir, !noServe)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "spacegate-dev", "directory for the generated files")
	cmd.Flags().BoolVar(&noServe, "no-serve", false, "only make the files and print how to connect")
	return cmd
}

func runQuickstart(ctx context.Context, w io.Writer, dir string, serve bool) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	qs := quickstart{dir: dir, w: w}
	if err := qs.make(ctx); err != nil {
		return err
	}
	qs.printHowTo()
	if !serve {
		return nil
	}
	fmt.Fprintf(w, "\nserving %s (Ctrl-C to stop)\n", qs.path("spacegate.yaml"))
	return runServe(ctx, qs.path("spacegate.yaml"), os.Getenv(replicaNameEnv))
}

type quickstart struct {
	dir string
	w   io.Writer
}

func (q quickstart) path(elem ...string) string {
	return filepath.Join(append([]string{q.dir}, elem...)...)
}

// make creates what is missing and reuses what exists, so that running
// quickstart twice keeps the certificates clients already hold. It goes
// through the code of `ca init`, `certs create`, `certs download` and
// `ip-rules create`, so that the dev setup is made the way a real one is.
func (q quickstart) make(ctx context.Context) error {
	for _, d := range []string{"pki", "client", "rules"} {
		if err := os.MkdirAll(q.path(d), 0o755); err != nil {
			return err
		}
	}
	// The space CA's key is the dev gate's crown jewel: 0700 around it.
	if err := os.Chmod(q.path("pki"), 0o700); err != nil {
		return err
	}
	store := &tlsconf.CertStore{Dir: q.path("pki")}
	if err := q.ca(ctx, store); err != nil {
		return err
	}
	if err := q.serverCert(ctx, store); err != nil {
		return err
	}
	if err := q.clientBundle(ctx, store); err != nil {
		return err
	}
	for _, route := range []string{qsPostgresRoute, qsRedisRoute} {
		if err := q.rules(ctx, route); err != nil {
			return err
		}
	}
	return q.config()
}

func (q quickstart) ca(ctx context.Context, store *tlsconf.CertStore) error {
	if exists(store.CAFile()) {
		if _, err := store.CA(); err != nil {
			return err
		}
		if !exists(store.CRLFile()) {
			return store.WriteCRL(ctx)
		}
		return nil
	}
	ca, err := store.InitCA(ctx, tlsconf.CAOptions{CommonName: "spacegate dev space CA"})
	if err != nil {
		return err
	}
	fmt.Fprintf(q.w, "created dev space CA %s\n", store.CAFile())
	return audit(ctx, store.Dir, auditEntry{Action: "ca.init", Via: "quickstart", Subject: ca.Cert.Subject.String(),
		Serial: tlsconf.FormatSerial(ca.Cert.SerialNumber), ExpiresAt: ca.Cert.NotAfter})
}

func (q quickstart) serverCert(ctx context.Context, store *tlsconf.CertStore) error {
	certFile, keyFile := q.path("pki", "server.crt"), q.path("pki", "server.key")
	if exists(certFile) && exists(keyFile) {
		return nil
	}
	// Half a pair is of no use; make both again.
	os.Remove(certFile)
	os.Remove(keyFile)
	if _, err := store.IssueServer(ctx, []string{"localhost", "127.0.0.1", "::1"}, certFile, keyFile); err != nil {
		return err
	}
	fmt.Fprintf(q.w, "created server certificate %s (localhost, 127.0.0.1, ::1)\n", certFile)
	return nil
}

// clientBundle makes one client certificate for both routes and writes
// postgresql.crt, postgresql.key, root.crt and postgresql.pk8, as `certs
// download` names them. root.crt is what clients need to verify the gate's
// server certificate: here the dev CA signed it.
func (q quickstart) clientBundle(ctx context.Context, store *tlsconf.CertStore) error {
	files := newClientFiles(q.path("client"), "", true)
	roots, err := serverRoots(q.path("pki", "server.crt"), store.CAFile())
	if err != nil {
		return err
	}
	if exists(files.Cert) && exists(files.Key) {
		if !exists(files.Root) {
			return atomicfile.WriteFile(files.Root, roots, 0o644)
		}
		return nil
	}
	cc, err := store.Create(ctx, tlsconf.ClientRequest{Routes: []string{qsPostgresRoute, qsRedisRoute}, Name: "dev-client"})
	if err != nil {
		return err
	}
	b, err := store.ReadClient(cc.ID)
	if err != nil {
		return err
	}
	if err := files.write(b, roots); err != nil {
		return err
	}
	fmt.Fprintf(q.w, "created client certificate %s (id %s, serial %s, expires %s)\n",
		files.Cert, cc.ID, cc.Serial, cc.ExpiresAt.Format(time.RFC3339))
	return audit(ctx, store.Dir, auditEntry{Action: "cert.create", Via: "quickstart", Routes: cc.Routes, ID: cc.ID,
		Name: cc.Name, Serial: cc.Serial, ExpiresAt: cc.ExpiresAt})
}

func (q quickstart) rules(ctx context.Context, route string) error {
	file := q.path("rules", route+".yaml")
	if exists(file) {
		return nil
	}
	store := &allowlist.Store{Path: file, Route: route}
	for _, r := range []struct{ cidr, desc string }{
		{"127.0.0.1/32", "loopback (IPv4), made by quickstart"},
		{"::1/128", "loopback (IPv6), made by quickstart"},
	} {
		rule, err := store.Create(ctx, netip.MustParsePrefix(r.cidr), r.desc)
		if err != nil {
			return err
		}
		if err := audit(ctx, q.path("pki"), auditEntry{Action: "ip_rule.create", Via: "quickstart", Route: route,
			ID: rule.ID, CIDR: r.cidr, Description: r.desc}); err != nil {
			return err
		}
	}
	return nil
}

func (q quickstart) config() error {
	file := q.path("spacegate.yaml")
	if exists(file) {
		return nil
	}
	cfg := `# spacegate dev config, made by 'spacegate quickstart'. Paths are relative to this file.
admin:
  listen: ` + qsAdminListen + `
log:
  level: info
  format: console
tls:
  cert_file: pki/server.crt
  key_file: pki/server.key
  client_ca_file: pki/ca.crt
  crl_file: pki/ca.crl
  min_version: "1.2"
pki:
  dir: pki
limits:
  max_connections: 1000
  handshake_timeout: 10s
  upstream_connect_timeout: 5s
  drain_timeout: 10s
routes:
  - name: ` + qsPostgresRoute + `
    protocol: postgres
    listen: ` + qsPostgresListen + `
    upstream: 127.0.0.1:5432
    ip_rules_file: rules/` + qsPostgresRoute + `.yaml
  - name: ` + qsRedisRoute + `
    protocol: redis
    listen: ` + qsRedisListen + `
    upstream: 127.0.0.1:6379
    ip_rules_file: rules/` + qsRedisRoute + `.yaml
`
	return atomicfile.WriteFile(file, []byte(cfg), 0o644)
}

func (q quickstart) printHowTo() {
	crt, key, root := q.path("client", "postgresql.crt"), q.path("client", "postgresql.key"), q.path("client", "root.crt")
	_, pgPort, _ := net.SplitHostPort(qsPostgresListen)
	_, redisPort, _ := net.SplitHostPort(qsRedisListen)
	fmt.Fprintf(q.w, `
Connect through the gate:

  psql "host=localhost port=%s user=postgres dbname=postgres sslmode=verify-full sslcert=%s sslkey=%s sslrootcert=%s"

  redis-cli --tls --cert %s --key %s --cacert %s -h localhost -p %s ping

or with libpq's environment variables:

  export PGSSLCERT=%s PGSSLKEY=%s PGSSLROOTCERT=%s
  psql "host=localhost port=%s user=postgres sslmode=verify-full"

Status: curl http://%s/v1/status   Metrics: curl http://%s/metrics
`, pgPort, crt, key, root, crt, key, root, redisPort, crt, key, root, pgPort, qsAdminListen, qsAdminListen)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, fs.ErrNotExist)
}
