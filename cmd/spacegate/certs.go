package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	sgadmin "github.com/spacegate/spacegate/admin"
	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/tlsconf"
)

func newCertsCmd() *cobra.Command {
	return newGroupCmd("certs", "Create, list, download, revoke and rotate client certificates",
		newCertsCreateCmd(), newCertsListCmd(), newCertsDownloadCmd(), newCertsRevokeCmd(), newCertsRotateCmd())
}

func newCertsCreateCmd() *cobra.Command {
	var config, name, keyType string
	var days int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "create ROUTE [--name TEXT]",
		Short: "Create a client certificate for a route",
		Long: "Create a client certificate signed by the space CA for ROUTE, valid 13 months, for client\n" +
			"authentication, with the identity spiffe://TRUST_DOMAIN/route/ROUTE/client/ID that the route\n" +
			"accepts by default and other routes refuse. Get its files with `spacegate certs download`.",
		Args: exactArgs(1, "one argument, ROUTE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			kt, err := parseKeyType(keyType)
			if err != nil {
				return err
			}
			if days < 0 {
				return usageError{fmt.Errorf("--days must be positive, got %d", days)}
			}
			return runCertsCreate(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), config, args[0], name, kt, days, asJSON)
		},
	}
	configFlag(cmd, &config)
	cmd.Flags().StringVar(&name, "name", "", "common name of the certificate (default ROUTE-client)")
	cmd.Flags().StringVar(&keyType, "key-type", string(tlsconf.KeyECDSAP256), "key of the certificate: ecdsa-p256 or rsa-2048")
	cmd.Flags().IntVar(&days, "days", 0, "validity in days (default: 13 months)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newCertsListCmd() *cobra.Command {
	var config string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list [ROUTE]",
		Short: "List the client certificates, of one route or all",
		Long: "List the client certificates with their status: ready, expiring (within 75 days: run\n" +
			"`spacegate certs rotate`), expired or revoked.",
		Args: maxArgs(1, "one argument, ROUTE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			route := ""
			if len(args) == 1 {
				route = args[0]
			}
			return runCertsList(cmd.OutOrStdout(), config, route, asJSON)
		},
	}
	configFlag(cmd, &config)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// downloadFlags are the flags of certs download.
type downloadFlags struct {
	config, id, prefix, dir, serverCA string
	pkcs8, json                       bool
}

func newCertsDownloadCmd() *cobra.Command {
	var f downloadFlags
	cmd := &cobra.Command{
		Use:   "download ROUTE --id ID [--prefix P] [--dir D] [--pkcs8]",
		Short: "Write a client certificate's files for psql, libpq and JDBC",
		Long: "Write Ppostgresql.crt (the certificate with its chain), Ppostgresql.key (mode 0600), Proot.crt\n" +
			"(the CAs that clients need to verify the gate's server certificate) and, with --pkcs8,\n" +
			"Ppostgresql.pk8 (the key as PKCS#8 DER, for JDBC) into D, then print the PGSSLCERT, PGSSLKEY\n" +
			"and PGSSLROOTCERT lines and a psql command.",
		Args: exactArgs(1, "one argument, ROUTE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlags(cmd, "id"); err != nil {
				return err
			}
			return runCertsDownload(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), f, args[0])
		},
	}
	configFlag(cmd, &f.config)
	cmd.Flags().StringVar(&f.id, "id", "", "the certificate's id, as spacegate certs list shows it")
	cmd.Flags().StringVar(&f.prefix, "prefix", "", "prefix of the file names, such as demo_")
	cmd.Flags().StringVar(&f.dir, "dir", "", "directory to write to (default $HOME/.postgresql)")
	cmd.Flags().BoolVar(&f.pkcs8, "pkcs8", false, "also write the key as PKCS#8 DER (Ppostgresql.pk8), for JDBC")
	cmd.Flags().StringVar(&f.serverCA, "server-ca", "", "PEM file with the CA that issued the gate's server certificate, if not the space CA")
	cmd.Flags().BoolVar(&f.json, "json", false, "print JSON")
	return cmd
}

func newCertsRevokeCmd() *cobra.Command {
	var f revokeFlags
	var id string
	cmd := &cobra.Command{
		Use:   "revoke ROUTE --id ID",
		Short: "Revoke a client certificate",
		Long: "Revoke a client certificate: write a new CRL listing it, which the running gates pick up.\n" +
			"It shows \"revoking (2/3; not yet: URL)\" until every replica of admin.fleet has a CRL of that\n" +
			"issuer with the new CRL number in force on the route, then \"revoked (3/3 replicas)\".\n" +
			"Revoking a revoked certificate again leaves the CRL as it is and checks the fleet again, the same\n" +
			"way: run it, with --wait, after copying the CRL to the replicas that were not yet.\n" + exitCodesHelp,
		Args: exactArgs(1, "one argument, ROUTE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlags(cmd, "id"); err != nil {
				return err
			}
			return runCertsRevoke(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), f, args[0], id)
		},
	}
	configFlag(cmd, &f.config)
	cmd.Flags().StringVar(&id, "id", "", "the certificate's id, as spacegate certs list shows it")
	cmd.Flags().BoolVar(&f.json, "json", false, "print JSON")
	cmd.Flags().StringVar(&f.admin, "admin", "", "admin endpoint of a running gate, to see the CRL in force (default from admin.listen)")
	adminTokenFlag(cmd, &f.tokenFile)
	waitFlag(cmd, &f.wait, changeWait)
	return cmd
}

// revokeFlags are the flags of certs revoke.
type revokeFlags struct {
	config, admin, tokenFile string
	json                     bool
	wait                     time.Duration
}

func newCertsRotateCmd() *cobra.Command {
	var config string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "rotate [ROUTE]",
		Short: "Replace the client certificates that expire within 75 days",
		Long: "Create a replacement for every client certificate (of ROUTE, or of all routes) that expires\n" +
			"within 75 days and has none yet, and say which. The old certificates stay valid until they\n" +
			"expire. Run it daily, from cron or a systemd timer; it also keeps the CRL fresh.",
		Args: maxArgs(1, "one argument, ROUTE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			route := ""
			if len(args) == 1 {
				route = args[0]
			}
			return runCertsRotate(cmd.Context(), cmd.OutOrStdout(), config, route, asJSON)
		},
	}
	configFlag(cmd, &config)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// certView is a client certificate as the certs commands print it.
type certView struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	Routes     []string  `json:"routes"`
	CreatedAt  time.Time `json:"created_at"`
	ExpiresAt  time.Time `json:"expires_at"`
	Status     string    `json:"status"`
	Serial     string    `json:"serial"`
	URIs       []string  `json:"uris"`
	Issuer     string    `json:"issuer"`
	RevokedAt  time.Time `json:"revoked_at,omitzero"`
	Replaces   string    `json:"replaces,omitempty"`
	ReplacedBy string    `json:"replaced_by,omitempty"`
}

func viewCert(c *tlsconf.ClientCert, now time.Time) certView {
	return certView{
		ID: c.ID, Name: c.Name, Routes: c.Routes, CreatedAt: c.CreatedAt.Truncate(time.Second), ExpiresAt: c.ExpiresAt,
		Status: string(c.Status(now)), Serial: c.Serial, URIs: c.URIs, Issuer: c.Issuer,
		RevokedAt: c.RevokedAt, Replaces: c.Replaces, ReplacedBy: c.ReplacedBy,
	}
}

// printCerts writes certificates as a table: id, created_at, expires_at,
// status, then name, and routes when withRoutes.
func printCerts(w io.Writer, certs []certView, withRoutes bool) error {
	tw := newTable(w)
	head := []string{"id", "created_at", "expires_at", "status", "name"}
	if withRoutes {
		head = append(head, "routes")
	}
	row(tw, head...)
	for _, c := range certs {
		cells := []string{c.ID, showTime(c.CreatedAt), showTime(c.ExpiresAt), c.Status, c.Name}
		if withRoutes {
			cells = append(cells, strings.Join(c.Routes, ","))
		}
		row(tw, cells...)
	}
	return tw.Flush()
}

func runCertsCreate(ctx context.Context, w, errW io.Writer, config, routeName, name string, kt tlsconf.KeyType, days int, asJSON bool) error {
	e, err := loadEnv(config)
	if err != nil {
		return err
	}
	route, err := e.route(routeName)
	if err != nil {
		return err
	}
	cc, err := e.store.Create(ctx, tlsconf.ClientRequest{
		Routes:      []string{routeName},
		Name:        name,
		TrustDomain: e.trustDomain(),
		ValidFor:    time.Duration(days) * 24 * time.Hour,
		KeyType:     kt,
	})
	if err != nil {
		return e.noCAHint(err)
	}
	if err := audit(ctx, e.pkiDir, auditEntry{Action: "cert.create", Route: routeName, ID: cc.ID, Name: cc.Name, Serial: cc.Serial, ExpiresAt: cc.ExpiresAt}); err != nil {
		return err
	}
	v := viewCert(cc, time.Now())
	if id := (tlsconf.Identity{CommonName: cc.Name, URIs: cc.URIs}); !tlsconf.NewClientPatterns(routeName, route.AllowedClients).Allows(id) {
		fmt.Fprintf(errW, "note: the allowed_clients of route %s (%s) do not accept this certificate; add %q to them\n",
			routeName, strings.Join(route.AllowedClients, ", "), tlsconf.RouteURIPattern(routeName))
	}
	if asJSON {
		return writeJSON(w, v)
	}
	if err := printCerts(w, []certView{v}, false); err != nil {
		return err
	}
	fmt.Fprintf(errW, "get its files with: spacegate certs download %s --id %s --prefix PREFIX --dir DIR\n", routeName, cc.ID)
	return nil
}

func runCertsList(w io.Writer, config, routeName string, asJSON bool) error {
	e, err := loadEnv(config)
	if err != nil {
		return err
	}
	if routeName != "" {
		if _, err := e.route(routeName); err != nil {
			return err
		}
	}
	certs, err := e.store.List()
	if err != nil {
		return err
	}
	now := time.Now()
	views := []certView{}
	for _, c := range certs {
		if routeName == "" || c.HasRoute(routeName) {
			views = append(views, viewCert(c, now))
		}
	}
	if asJSON {
		return writeJSON(w, views)
	}
	if len(views) == 0 {
		if routeName != "" {
			fmt.Fprintf(w, "route %s has no client certificates; create one with: spacegate certs create %s\n", routeName, routeName)
		} else {
			fmt.Fprintln(w, "no client certificates; create one with: spacegate certs create ROUTE")
		}
		return nil
	}
	return printCerts(w, views, routeName == "")
}

// routeCert returns client certificate id, which must be one of route's.
func (e *env) routeCert(routeName, id string) (*tlsconf.ClientCert, error) {
	if _, err := e.route(routeName); err != nil {
		return nil, err
	}
	cc, err := e.store.Get(id)
	if errors.Is(err, tlsconf.ErrCertNotFound) {
		return nil, withHint(err, "see the certificates with: spacegate certs list %s", routeName)
	}
	if err != nil {
		return nil, err
	}
	if !cc.HasRoute(routeName) {
		return nil, withHint(fmt.Errorf("certificate %s is not a certificate of route %s: it was made for %s", cc.ID, routeName, strings.Join(cc.Routes, ", ")),
			"see the certificates with: spacegate certs list %s", routeName)
	}
	return cc, nil
}

// downloadResult is what certs download prints with --json.
type downloadResult struct {
	ID    string            `json:"id"`
	Route string            `json:"route"`
	Dir   string            `json:"dir"`
	Files clientFiles       `json:"files"`
	Env   map[string]string `json:"env"`
}

func runCertsDownload(ctx context.Context, w, errW io.Writer, f downloadFlags, routeName string) error {
	e, err := loadEnv(f.config)
	if err != nil {
		return err
	}
	cc, err := e.routeCert(routeName, f.id)
	if err != nil {
		return err
	}
	now := time.Now()
	switch cc.Status(now) {
	case tlsconf.StatusRevoked:
		return withHint(fmt.Errorf("certificate %s was revoked at %s", cc.ID, showTime(cc.RevokedAt)), "create a new one with: spacegate certs create %s", routeName)
	case tlsconf.StatusExpired:
		fmt.Fprintf(errW, "warning: certificate %s expired at %s; the gate refuses it\n", cc.ID, showTime(cc.ExpiresAt))
	case tlsconf.StatusExpiring:
		fmt.Fprintf(errW, "warning: certificate %s expires at %s; replace it with: spacegate certs rotate %s\n", cc.ID, showTime(cc.ExpiresAt), routeName)
	}
	dir := f.dir
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return withHint(err, "pass the directory with --dir DIR")
		}
		dir = filepath.Join(home, ".postgresql")
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return err
	}
	route, _ := e.route(routeName)
	files, err := downloadBundle(e, route, cc.ID, dir, f.prefix, f.pkcs8, f.serverCA)
	if err != nil {
		return err
	}
	if err := audit(ctx, e.pkiDir, auditEntry{Action: "cert.download", Route: routeName, ID: cc.ID, Serial: cc.Serial, Dir: dir}); err != nil {
		return err
	}
	env := map[string]string{"PGSSLCERT": files.Cert, "PGSSLKEY": files.Key, "PGSSLROOTCERT": files.Root}
	if f.json {
		return writeJSON(w, downloadResult{ID: cc.ID, Route: routeName, Dir: dir, Files: files, Env: env})
	}
	fmt.Fprintf(w, "your certs are now located in %s\n", dir)
	tw := newTable(w)
	row(tw, "  "+filepath.Base(files.Cert), "client certificate with chain")
	row(tw, "  "+filepath.Base(files.Key), "private key (mode 0600)")
	row(tw, "  "+filepath.Base(files.Root), "CAs of the gate's server certificate")
	if files.PKCS8 != "" {
		row(tw, "  "+filepath.Base(files.PKCS8), "private key as PKCS#8 DER, for JDBC")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	t := e.tls(route)
	host := connectHost(t.CertFile, route.Listen)
	_, port, _ := net.SplitHostPort(route.Listen)
	fmt.Fprintln(w)
	if route.Protocol == config.ProtocolRedis {
		fmt.Fprintf(w, "redis-cli --tls --cert %s --key %s --cacert %s -h %s -p %s\n",
			shellQuote(files.Cert), shellQuote(files.Key), shellQuote(files.Root), host, port)
		return nil
	}
	for _, k := range []string{"PGSSLCERT", "PGSSLKEY", "PGSSLROOTCERT"} {
		fmt.Fprintf(w, "export %s=%s\n", k, shellQuote(env[k]))
	}
	fmt.Fprintf(w, "psql \"host=%s port=%s sslmode=verify-ca\"\n", host, port)
	if files.PKCS8 != "" {
		fmt.Fprintf(w, "jdbc:postgresql://%s/DATABASE?sslmode=verify-ca&sslcert=%s&sslkey=%s&sslrootcert=%s\n",
			net.JoinHostPort(host, port), files.Cert, files.PKCS8, files.Root)
	}
	return nil
}

// downloadBundle writes the files of client certificate id into dir, with
// a root.crt for the server certificate of route.
func downloadBundle(e *env, route *config.Route, id, dir, prefix string, pkcs8 bool, serverCA string) (clientFiles, error) {
	b, err := e.store.ReadClient(id)
	if err != nil {
		return clientFiles{}, err
	}
	t := e.tls(route)
	roots, err := serverRoots(t.CertFile, e.store.CAFile(), t.ClientCAFile, serverCA)
	if err != nil {
		return clientFiles{}, err
	}
	files := newClientFiles(dir, prefix, pkcs8)
	if err := files.write(b, roots); err != nil {
		return clientFiles{}, err
	}
	return files, nil
}

func runCertsRevoke(ctx context.Context, w, errW io.Writer, f revokeFlags, routeName, id string) error {
	e, err := loadEnv(f.config)
	if err != nil {
		return err
	}
	if _, err := e.routeCert(routeName, id); err != nil {
		return err
	}
	gate, err := newGateAdmin(e.adminURL(f.admin), f.tokenFile, e.cfg)
	if err != nil {
		return err
	}
	// Revoking a certificate again changes nothing on disk; it checks the
	// fleet again, which is how to confirm a revocation once the CRL has
	// been copied to the replicas that --wait named.
	cc, err := e.store.Revoke(ctx, id)
	already := errors.Is(err, tlsconf.ErrAlreadyRevoked)
	if err != nil && !already {
		return e.noCAHint(err)
	}
	var want map[string]*big.Int
	if already {
		want, err = crlsListing(e.store.CRLFile(), cc.Serial)
	} else {
		if err := audit(ctx, e.pkiDir, auditEntry{Action: "cert.revoke", Route: routeName, ID: cc.ID, Serial: cc.Serial}); err != nil {
			return err
		}
		want, err = crlNumbers(e.store.CRLFile())
	}
	if err != nil {
		return err
	}
	fw := awaitFleet(ctx, gate, f.wait, func(r sgadmin.Replica) bool { return servesCRLs(r, routeName, want) })
	state := fw.unknown
	if state == "" {
		state = crlRevoking
		if fw.progress.done() {
			state = crlRevoked
		}
	}
	if f.json {
		v := struct {
			certView
			AlreadyRevoked bool           `json:"already_revoked,omitempty"`
			Status         string         `json:"status"`
			Replicas       *fleetProgress `json:"replicas,omitempty"`
		}{viewCert(cc, time.Now()), already, state, fw.replicas()}
		if err := writeJSON(w, v); err != nil {
			return err
		}
	} else {
		if already {
			fmt.Fprintf(w, "certificate %s (serial %s) was already revoked at %s\n%s is unchanged\n",
				cc.ID, cc.Serial, showTime(cc.RevokedAt), e.store.CRLFile())
		} else {
			fmt.Fprintf(w, "revoked certificate %s (serial %s) at %s\nwrote %s\n",
				cc.ID, cc.Serial, showTime(cc.RevokedAt), e.store.CRLFile())
		}
		fmt.Fprintf(w, "status: %s\n", fw.state(crlRevoked, crlRevoking))
		e.pkiNotes(errW)
	}
	return fw.err("revocation of "+cc.ID, f.wait)
}

// States of a revocation on the fleet.
const (
	crlRevoking = "revoking" // the CRL is written, not yet in force everywhere
	crlRevoked  = "revoked"  // every replica has it in force
)

// crlNumbers returns the issuer (as the gate names it) and number of each
// CRL in file: one, or one per issuer of the bundle.
func crlNumbers(file string) (map[string]*big.Int, error) {
	out, err := numberedCRLs(file, func(*x509.RevocationList) bool { return true })
	if err == nil && len(out) == 0 {
		return nil, fmt.Errorf("%s holds no numbered CRL", file)
	}
	return out, err
}

// crlsListing returns the issuer and number of each CRL in file that
// lists serial (hex, as certificates' metadata has it): what a replica must
// serve, at least, for an earlier revocation to be in force. An older CRL
// may list it too, but the file does not say which; so a replica counts
// once it has the CRL of the file or a newer one. When no CRL lists the
// serial (its CA was pruned: the gates refuse the certificate as untrusted),
// it is every CRL of the file, as for a new revocation.
func crlsListing(file, serial string) (map[string]*big.Int, error) {
	want, ok := new(big.Int).SetString(serial, 16)
	if !ok {
		return nil, fmt.Errorf("bad serial %q", serial)
	}
	out, err := numberedCRLs(file, func(crl *x509.RevocationList) bool {
		return slices.ContainsFunc(crl.RevokedCertificateEntries, func(e x509.RevocationListEntry) bool {
			return e.SerialNumber.Cmp(want) == 0
		})
	})
	if err == nil && len(out) == 0 {
		return crlNumbers(file)
	}
	return out, err
}

// numberedCRLs returns the issuer and number of each numbered CRL in file
// for which keep holds.
func numberedCRLs(file string, keep func(*x509.RevocationList) bool) (map[string]*big.Int, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	out := map[string]*big.Int{}
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "X509 CRL" {
			continue
		}
		crl, err := x509.ParseRevocationList(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		if crl.Number != nil && keep(crl) {
			out[crl.Issuer.String()] = crl.Number
		}
	}
	return out, nil
}

// servesCRLs reports whether replica r has, on route, for each issuer of
// want, a CRL numbered at least as want says.
func servesCRLs(r sgadmin.Replica, route string, want map[string]*big.Int) bool {
	crls := r.Routes[route].CRLs
	for issuer, n := range want {
		i := slices.IndexFunc(crls, func(c sgadmin.CRL) bool { return c.Issuer == issuer })
		if i < 0 {
			return false
		}
		got, ok := new(big.Int).SetString(crls[i].Number, 10)
		if !ok || got.Cmp(n) < 0 {
			return false
		}
	}
	return true
}

// renewalView is one replaced certificate, as certs rotate prints it.
type renewalView struct {
	Old certView `json:"old"`
	New certView `json:"new"`
}

func runCertsRotate(ctx context.Context, w io.Writer, config, routeName string, asJSON bool) error {
	e, err := loadEnv(config)
	if err != nil {
		return err
	}
	opts := tlsconf.RenewOptions{TrustDomain: e.trustDomain()}
	if routeName != "" {
		if _, err := e.route(routeName); err != nil {
			return err
		}
		opts.Filter = func(c *tlsconf.ClientCert) bool { return c.HasRoute(routeName) }
	}
	renewed, err := e.store.Renew(ctx, opts)
	// Audit what was done even if a later renewal failed.
	for _, r := range renewed {
		if aerr := audit(ctx, e.pkiDir, auditEntry{Action: "cert.rotate", Routes: r.New.Routes, ID: r.New.ID, Replaces: r.Old.ID, Name: r.New.Name, Serial: r.New.Serial, ExpiresAt: r.New.ExpiresAt}); aerr != nil && err == nil {
			err = aerr
		}
	}
	if err != nil {
		return e.noCAHint(err)
	}
	now := time.Now()
	views := []renewalView{}
	for _, r := range renewed {
		views = append(views, renewalView{Old: viewCert(r.Old, now), New: viewCert(r.New, now)})
	}
	if asJSON {
		return writeJSON(w, views)
	}
	if len(views) == 0 {
		fmt.Fprintln(w, "no client certificate needs a replacement: none expires within 75 days without one")
		return nil
	}
	fmt.Fprintf(w, "created %d replacement certificate(s); give them to their owners before the old ones expire:\n", len(views))
	tw := newTable(w)
	row(tw, "old id", "expires_at", "new id", "expires_at", "name", "routes")
	for _, v := range views {
		row(tw, v.Old.ID, showTime(v.Old.ExpiresAt), v.New.ID, showTime(v.New.ExpiresAt), v.New.Name, strings.Join(v.New.Routes, ","))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "download one with: spacegate certs download ROUTE --id NEW_ID --prefix PREFIX --dir DIR")
	return nil
}
