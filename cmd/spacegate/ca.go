package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/spacegate/spacegate/tlsconf"
)

// caFlags are the flags of ca init and ca rotate.
type caFlags struct {
	config      string
	pkiDir      string
	keyType     string
	name        string
	serverNames []string
	json        bool
	fleet       caFleetFlags // ca rotate
}

func newCACmd() *cobra.Command {
	return newGroupCmd("ca", "Create, rotate, prune and check the space CA", newCAInitCmd(), newCARotateCmd(), newCAPruneCmd(), newCACheckCmd())
}

func newCAInitCmd() *cobra.Command {
	var f caFlags
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create the space CA in pki.dir",
		Long: "Create the space CA in pki.dir (or --pki-dir): ca.crt (the CA bundle, for tls.client_ca_file),\n" +
			"ca.key (mode 0600) and an empty CRL ca.crl (for tls.crl_file). It never replaces an existing CA.\n" +
			"With --server-name, also issue the gate's server certificate, server.crt and server.key.",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCAInit(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), f)
		},
	}
	configFlag(cmd, &f.config)
	cmd.Flags().StringVar(&f.pkiDir, "pki-dir", "", "make the CA in this directory instead of the config's pki.dir")
	cmd.Flags().StringVar(&f.keyType, "key-type", string(tlsconf.KeyECDSAP256), "key of the CA: ecdsa-p256 or rsa-2048")
	cmd.Flags().StringVar(&f.name, "name", tlsconf.DefaultCAName, "common name of the CA")
	cmd.Flags().StringSliceVar(&f.serverNames, "server-name", nil, "also issue a server certificate for these host names or IP addresses (repeat or comma-separate)")
	return cmd
}

func newCARotateCmd() *cobra.Command {
	var f caFlags
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Add a new signing CA to the bundle, beside the old one",
		Long: "Make a new space CA and put it first in ca.crt, beside the CAs already there, so that the gate\n" +
			"trusts certificates of both: nothing stops working. New client certificates are signed by the\n" +
			"new CA, and ca.crl gains the new CA's own CRL beside the old one's (one CRL per CA). The old CA's\n" +
			"key is kept in pki.dir/ca-retired/, to sign its CRL. Once every certificate of the old CA is\n" +
			"replaced, revoked or expired, end the rotation with: spacegate ca prune\n" +
			"It shows \"trusting (2/3; not yet: URL)\" until every replica of admin.fleet trusts exactly the new\n" +
			"bundle on each route that trusts any of its CAs (routes with another client_ca_file are ignored),\n" +
			"then \"trusted (3/3 replicas)\"; `spacegate ca check --wait` asks again later.\n" + exitCodesHelp,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCARotate(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), f)
		},
	}
	configFlag(cmd, &f.config)
	cmd.Flags().StringVar(&f.pkiDir, "pki-dir", "", "rotate the CA in this directory instead of the config's pki.dir")
	cmd.Flags().StringVar(&f.keyType, "key-type", "", "key of the new CA: ecdsa-p256 or rsa-2048 (default: that of the current CA)")
	cmd.Flags().StringVar(&f.name, "name", "", "common name of the new CA (default: the current one with a generation suffix such as G2)")
	cmd.Flags().BoolVar(&f.json, "json", false, "print JSON")
	f.fleet.register(cmd, changeWait)
	return cmd
}

// pkiStore returns the CA store named by --pki-dir, or by the config; the
// env is nil with --pki-dir.
func (f caFlags) pkiStore() (*tlsconf.CertStore, *env, error) {
	if f.pkiDir != "" {
		return &tlsconf.CertStore{Dir: f.pkiDir}, nil, nil
	}
	e, err := loadEnv(f.config)
	if err != nil {
		return nil, nil, err
	}
	return e.store, e, nil
}

func parseKeyType(s string) (tlsconf.KeyType, error) {
	switch k := tlsconf.KeyType(s); k {
	case "", tlsconf.KeyECDSAP256, tlsconf.KeyRSA2048:
		return k, nil
	}
	return "", usageError{fmt.Errorf("--key-type %q: want %s or %s", s, tlsconf.KeyECDSAP256, tlsconf.KeyRSA2048)}
}

func runCAInit(ctx context.Context, w, errW io.Writer, f caFlags) error {
	kt, err := parseKeyType(f.keyType)
	if err != nil {
		return err
	}
	store, e, err := f.pkiStore()
	if err != nil {
		return err
	}
	ca, err := store.InitCA(ctx, tlsconf.CAOptions{CommonName: f.name, KeyType: kt})
	if errors.Is(err, fs.ErrExist) {
		return withHint(err, "the space CA exists already; to replace it without an outage, run: spacegate ca rotate")
	}
	if err != nil {
		return err
	}
	if err := audit(ctx, store.Dir, auditEntry{Action: "ca.init", Subject: ca.Cert.Subject.String(), Serial: tlsconf.FormatSerial(ca.Cert.SerialNumber), ExpiresAt: ca.Cert.NotAfter}); err != nil {
		return err
	}
	fmt.Fprintf(w, "created space CA %q (%s, expires %s) in %s\n", ca.Cert.Subject.CommonName, describeKey(ca.Cert), showTime(ca.Cert.NotAfter), store.Dir)
	tw := newTable(w)
	row(tw, "  "+store.CAFile(), "CA bundle: name it in the config as tls.client_ca_file")
	row(tw, "  "+store.CRLFile(), "revocation list (empty): name it as tls.crl_file")
	row(tw, "  "+store.CAKeyFile(), "CA key (mode 0600): keep it secret and back it up")
	if err := tw.Flush(); err != nil {
		return err
	}
	if e != nil {
		e.pkiNotes(errW)
	}
	if len(f.serverNames) == 0 {
		return nil
	}
	certFile, keyFile := filepath.Join(store.Dir, "server.crt"), filepath.Join(store.Dir, "server.key")
	cert, err := store.IssueServer(ctx, f.serverNames, certFile, keyFile)
	if err != nil {
		return err
	}
	if err := audit(ctx, store.Dir, auditEntry{Action: "cert.create_server", Name: cert.Subject.CommonName, Serial: tlsconf.FormatSerial(cert.SerialNumber), ExpiresAt: cert.NotAfter}); err != nil {
		return err
	}
	fmt.Fprintf(w, "created server certificate %s for %v (expires %s) and its key %s:\nname them in the config as tls.cert_file and tls.key_file\n",
		certFile, strings.Join(f.serverNames, ", "), showTime(cert.NotAfter), keyFile)
	return nil
}

func runCARotate(ctx context.Context, w, errW io.Writer, f caFlags) error {
	kt, err := parseKeyType(f.keyType)
	if err != nil {
		return err
	}
	store, e, err := f.pkiStore()
	if err != nil {
		return err
	}
	gate, err := f.fleet.gate(e)
	if err != nil {
		return err
	}
	ca, err := store.RotateCA(ctx, tlsconf.CAOptions{CommonName: f.name, KeyType: kt})
	if errors.Is(err, tlsconf.ErrNoCA) {
		return withHint(err, "there is no CA to rotate; create it with: spacegate ca init")
	}
	if err != nil {
		return err
	}
	if err := audit(ctx, store.Dir, auditEntry{Action: "ca.rotate", Subject: ca.Cert.Subject.String(), Serial: tlsconf.FormatSerial(ca.Cert.SerialNumber), ExpiresAt: ca.Cert.NotAfter}); err != nil {
		return err
	}
	bundle, err := store.Bundle()
	if err != nil {
		return err
	}
	fw := f.fleet.awaitBundle(ctx, gate, bundle)
	if f.json {
		v := rotateView{Created: viewCA(ca.Cert), Bundle: viewCAs(bundle), Status: fw.status(bundleTrusted, bundleTrusting), Replicas: fw.replicas()}
		if err := writeJSON(w, v); err != nil {
			return err
		}
		return fw.err("the new CA bundle "+store.CAFile(), f.fleet.wait)
	}
	fmt.Fprintf(w, "created space CA %q (%s, expires %s); it signs new certificates from now on, and %s holds its CRL\n",
		ca.Cert.Subject.CommonName, describeKey(ca.Cert), showTime(ca.Cert.NotAfter), store.CRLFile())
	fmt.Fprintf(w, "%s now trusts %d CAs:\n", store.CAFile(), len(bundle))
	tw := newTable(w)
	now := time.Now()
	for i, c := range bundle {
		role := "trusted"
		if i == 0 {
			role = "signing"
		}
		if now.After(c.NotAfter) {
			role += ", expired"
		}
		row(tw, "  "+c.Subject.CommonName, role, "expires "+showTime(c.NotAfter))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "certificates of the old CA keep working; replace them with `spacegate certs create` at your pace,\nthen remove the old CA with `spacegate ca prune`")
	fmt.Fprintf(w, "status: %s\n", fw.state(bundleTrusted, bundleTrusting))
	if e != nil {
		e.pkiNotes(errW)
	}
	return fw.err("the new CA bundle "+store.CAFile(), f.fleet.wait)
}

// rotateView is the output of ca rotate --json: the new CA, the bundle
// (signing CA first) and whether every replica trusts it.
type rotateView struct {
	Created  caView         `json:"created"`
	Bundle   []caView       `json:"bundle"`
	Status   string         `json:"status"`
	Replicas *fleetProgress `json:"replicas,omitempty"`
}

// describeKey names the key algorithm of c.
func describeKey(c *x509.Certificate) string {
	switch k := c.PublicKey.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	}
	return c.PublicKeyAlgorithm.String()
}
