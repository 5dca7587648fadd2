package main

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/spacegate/spacegate/tlsconf"
)

type caPruneFlags struct {
	config string
	pkiDir string
	force  bool
	json   bool
	fleet  caFleetFlags
}

func newCAPruneCmd() *cobra.Command {
	var f caPruneFlags
	cmd := &cobra.Command{
		Use:   "prune [--force]",
		Short: "Remove retired CAs that no live certificate needs from the bundle",
		Long: "End a CA rotation: remove from ca.crt every CA but the signing one, and its CRL from ca.crl,\n" +
			"once no client certificate of pki.dir that is neither expired nor revoked chains to it.\n" +
			"Otherwise nothing changes and it exits 1, naming those certificates: replace them\n" +
			"(certs create), revoke them, or let them expire. --force removes the CAs anyway; their\n" +
			"certificates are then refused by the gate as not signed by the space CA, and live sessions\n" +
			"that use them are cut at the reload. The retired keys stay in pki.dir/ca-retired/.\n" +
			"It shows \"pruning (2/3; not yet: URL)\" until every replica of admin.fleet trusts exactly the pruned\n" +
			"bundle on each route that trusts any of its CAs (routes with another client_ca_file are ignored),\n" +
			"then \"pruned (3/3 replicas)\"; with nothing to prune it checks the bundle as it is (\"trusted\").\n" + exitCodesHelp,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCAPrune(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), f)
		},
	}
	configFlag(cmd, &f.config)
	cmd.Flags().StringVar(&f.pkiDir, "pki-dir", "", "prune the CA bundle in this directory instead of the config's pki.dir")
	cmd.Flags().BoolVar(&f.force, "force", false, "remove retired CAs even while live certificates chain to them")
	cmd.Flags().BoolVar(&f.json, "json", false, "print JSON")
	f.fleet.register(cmd, changeWait)
	return cmd
}

// caView is a CA of the bundle, as ca prune prints it.
type caView struct {
	Subject   string    `json:"subject"`
	KeyID     string    `json:"key_id"`
	Serial    string    `json:"serial"`
	ExpiresAt time.Time `json:"expires_at"`
}

func viewCA(c *x509.Certificate) caView {
	return caView{Subject: c.Subject.String(), KeyID: hex.EncodeToString(c.SubjectKeyId), Serial: tlsconf.FormatSerial(c.SerialNumber), ExpiresAt: c.NotAfter.UTC()}
}

// liveCertView is a certificate that still needs a retired CA.
type liveCertView struct {
	Routes    []string  `json:"routes"`
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Serial    string    `json:"serial"`
	NotAfter  time.Time `json:"not_after"`
	CA        string    `json:"ca"` // subject of the retired CA it chains to
	CAKeyID   string    `json:"ca_key_id"`
	Status    string    `json:"status"`
	CreatedAt time.Time `json:"created_at"`
}

// pruneView is the output of ca prune --json. Removed is empty when the
// prune was refused (exit 1); Live then names what stands in the way, and
// Status is "" (the fleet is not asked).
type pruneView struct {
	Removed  []caView       `json:"removed"`
	Kept     []caView       `json:"kept"`
	Live     []liveCertView `json:"live"`
	Forced   bool           `json:"forced"`
	Status   string         `json:"status,omitempty"`
	Replicas *fleetProgress `json:"replicas,omitempty"`
}

func runCAPrune(ctx context.Context, w, errW io.Writer, f caPruneFlags) error {
	store, e, err := caFlags{config: f.config, pkiDir: f.pkiDir}.pkiStore()
	if err != nil {
		return err
	}
	gate, err := f.fleet.gate(e)
	if err != nil {
		return err
	}
	p, err := store.PruneCAs(ctx, f.force)
	if errors.Is(err, tlsconf.ErrNoCA) {
		return withHint(err, "there is no CA to prune; create it with: spacegate ca init")
	}
	if err != nil && !errors.Is(err, tlsconf.ErrCAInUse) {
		return err
	}
	now := time.Now()
	v := pruneView{Removed: []caView{}, Kept: []caView{}, Live: []liveCertView{}, Forced: p.Forced}
	for _, c := range p.Removed {
		v.Removed = append(v.Removed, viewCA(c))
	}
	for _, c := range p.Kept {
		v.Kept = append(v.Kept, viewCA(c))
	}
	for _, l := range p.Live {
		v.Live = append(v.Live, liveCertView{
			Routes: l.Cert.Routes, ID: l.Cert.ID, Name: l.Cert.Name, Serial: l.Cert.Serial, NotAfter: l.Cert.ExpiresAt,
			CA: l.CA.Subject.String(), CAKeyID: hex.EncodeToString(l.CA.SubjectKeyId),
			Status: string(l.Cert.Status(now)), CreatedAt: l.Cert.CreatedAt,
		})
	}
	if err == nil && len(p.Removed) > 0 {
		entry := auditEntry{Action: "ca.prune"}
		for _, c := range p.Removed {
			entry.Subject, entry.Serial, entry.ExpiresAt = c.Subject.String(), tlsconf.FormatSerial(c.SerialNumber), c.NotAfter
			if p.Forced {
				entry.Description = fmt.Sprintf("forced, %d live certificate(s)", len(p.Live))
			}
			if aerr := audit(ctx, store.Dir, entry); aerr != nil {
				return aerr
			}
		}
	}
	// The fleet is asked once the files are written: whether every replica
	// trusts the pruned bundle, or, with nothing to prune, the bundle as is.
	var fw fleetWait
	doneState, pendingState := bundlePruned, bundlePruning
	if len(p.Removed) == 0 {
		doneState, pendingState = bundleTrusted, bundleTrusting
	}
	if err == nil {
		fw = f.fleet.awaitBundle(ctx, gate, p.Kept)
		v.Status, v.Replicas = fw.status(doneState, pendingState), fw.replicas()
	}
	what := "the pruned CA bundle " + store.CAFile()
	if len(p.Removed) == 0 {
		what = "the CA bundle " + store.CAFile()
	}
	if f.json {
		if jerr := writeJSON(w, v); jerr != nil {
			return jerr
		}
	}
	if err != nil {
		// Refused: name every certificate that stands in the way.
		var b strings.Builder
		fmt.Fprintf(&b, "%v:", err)
		for _, l := range v.Live {
			fmt.Fprintf(&b, "\n  route %s  id %s  serial %s  notAfter %s  (CA %s)",
				strings.Join(l.Routes, ","), l.ID, l.Serial, showTime(l.NotAfter), l.CA)
		}
		return withHint(errors.New(b.String()),
			"replace them (spacegate certs create ROUTE, then hand out the new ones), revoke them (spacegate certs revoke ROUTE --id ID), "+
				"or wait until they expire; --force removes the CA anyway and they stop working")
	}
	if p.Forced {
		fmt.Fprintf(errW, "warning: --force: %d live certificate(s) of the removed CA(s) no longer work:\n", len(v.Live))
		for _, l := range v.Live {
			fmt.Fprintf(errW, "  route %s  id %s  serial %s  notAfter %s\n", strings.Join(l.Routes, ","), l.ID, l.Serial, showTime(l.NotAfter))
		}
	}
	if f.json {
		return fw.err(what, f.fleet.wait)
	}
	if len(p.Removed) == 0 {
		fmt.Fprintf(w, "nothing to prune: %s holds only the signing CA\nstatus: %s\n", store.CAFile(), fw.state(doneState, pendingState))
		return fw.err(what, f.fleet.wait)
	}
	for _, c := range p.Removed {
		fmt.Fprintf(w, "removed retired CA %q (serial %s, expires %s) from %s, and its CRL from %s\n",
			c.Subject.CommonName, tlsconf.FormatSerial(c.SerialNumber), showTime(c.NotAfter), store.CAFile(), store.CRLFile())
	}
	fmt.Fprintf(w, "%s now trusts %d CA(s):\n", store.CAFile(), len(p.Kept))
	tw := newTable(w)
	for i, c := range p.Kept {
		role := "trusted"
		if i == 0 {
			role = "signing"
		}
		row(tw, "  "+c.Subject.CommonName, role, "expires "+showTime(c.NotAfter))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "status: %s\n", fw.state(doneState, pendingState))
	if e != nil {
		e.pkiNotes(errW)
	}
	return fw.err(what, f.fleet.wait)
}
