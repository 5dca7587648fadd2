package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/spacegate/spacegate/admin"
	"github.com/spacegate/spacegate/config"
)

// States of a CA bundle on the fleet.
const (
	bundleTrusting = "trusting" // ca rotate: the new bundle is written, not yet in force everywhere
	bundleTrusted  = "trusted"  // every replica trusts exactly the bundle
	bundlePruning  = "pruning"  // ca prune: a removed CA is still trusted somewhere
	bundlePruned   = "pruned"   // no replica trusts a removed CA any more
)

// caFleetFlags are the flags by which ca rotate, prune and check ask the
// fleet whether it trusts the bundle.
type caFleetFlags struct {
	admin, tokenFile string
	wait             time.Duration
}

func (f *caFleetFlags) register(cmd *cobra.Command, wait time.Duration) {
	cmd.Flags().StringVar(&f.admin, "admin", "", "admin endpoint of a running gate, to see the CA bundle in force (default from admin.listen; none with --pki-dir)")
	adminTokenFlag(cmd, &f.tokenFile)
	waitFlag(cmd, &f.wait, wait)
}

// gate returns the admin endpoint to ask: --admin, else the config's
// admin.listen; with --pki-dir there is no config (e is nil), so only
// --admin.
func (f caFleetFlags) gate(e *env) (gateAdmin, error) {
	base, cfg := strings.TrimSuffix(f.admin, "/"), (*config.Config)(nil)
	if e != nil {
		base, cfg = e.adminURL(f.admin), e.cfg
	}
	return newGateAdmin(base, f.tokenFile, cfg)
}

// awaitBundle waits until every replica trusts exactly the CAs of bundle
// (see servesBundle).
func (f caFleetFlags) awaitBundle(ctx context.Context, gate gateAdmin, bundle []*x509.Certificate) fleetWait {
	fps := caFingerprints(bundle)
	return awaitFleet(ctx, gate, f.wait, func(r admin.Replica) bool { return servesBundle(r, fps) })
}

// caFingerprints returns the SHA-256 of each CA, hex, as the gate names
// them in ca_fingerprints.
func caFingerprints(cas []*x509.Certificate) []string {
	out := make([]string, 0, len(cas))
	for _, c := range cas {
		sum := sha256.Sum256(c.Raw)
		out = append(out, hex.EncodeToString(sum[:]))
	}
	return out
}

// servesBundle reports whether replica r trusts exactly the CAs whose
// fingerprints are fps on every route that trusts any of them, and has at
// least one such route. A route that trusts none of them reads another
// bundle (its own client_ca_file) and is not this store's business: it is
// ignored. Exactly, not at least: after ca prune a replica that still
// trusts a removed CA beside the kept ones has not followed.
func servesBundle(r admin.Replica, fps []string) bool {
	on := false
	for _, rt := range r.Routes {
		if !slices.ContainsFunc(rt.CAFingerprints, func(s string) bool { return slices.Contains(fps, s) }) {
			continue
		}
		on = true
		if len(rt.CAFingerprints) != len(fps) || slices.ContainsFunc(fps, func(s string) bool { return !slices.Contains(rt.CAFingerprints, s) }) {
			return false
		}
	}
	return on
}

func newCACheckCmd() *cobra.Command {
	var f caFleetFlags
	var configFile, pkiDir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Say whether every replica trusts the CA bundle of pki.dir",
		Long: "Ask admin.fleet whether every replica trusts exactly the CAs of pki.dir's ca.crt on each route\n" +
			"that trusts any of them (routes with their own client_ca_file are ignored): \"trusted (3/3 replicas)\",\n" +
			"or \"trusting (2/3; not yet: URL)\". Run it after copying the files of a ca rotate or ca prune to\n" +
			"the replicas; --wait waits for them.\n" + exitCodesHelp,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCACheck(cmd.Context(), cmd.OutOrStdout(), configFile, pkiDir, asJSON, f)
		},
	}
	configFlag(cmd, &configFile)
	cmd.Flags().StringVar(&pkiDir, "pki-dir", "", "check the CA bundle in this directory instead of the config's pki.dir")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	f.register(cmd, checkWait)
	return cmd
}

// bundleView is the output of ca check --json.
type bundleView struct {
	Bundle   []caView       `json:"bundle"`
	Status   string         `json:"status"`
	Replicas *fleetProgress `json:"replicas,omitempty"`
}

func runCACheck(ctx context.Context, w io.Writer, configFile, pkiDir string, asJSON bool, f caFleetFlags) error {
	store, e, err := caFlags{config: configFile, pkiDir: pkiDir}.pkiStore()
	if err != nil {
		return err
	}
	gate, err := f.gate(e)
	if err != nil {
		return err
	}
	bundle, err := store.Bundle()
	if err != nil {
		return withHint(err, "there is no CA; create it with: spacegate ca init")
	}
	fw := f.awaitBundle(ctx, gate, bundle)
	if asJSON {
		v := bundleView{Bundle: viewCAs(bundle), Status: fw.status(bundleTrusted, bundleTrusting), Replicas: fw.replicas()}
		if err := writeJSON(w, v); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(w, "%s holds %d CA(s)\nstatus: %s\n", store.CAFile(), len(bundle), fw.state(bundleTrusted, bundleTrusting))
	}
	return fw.err("the CA bundle "+store.CAFile(), f.wait)
}

// status is the state of w in one word for --json: doneState,
// pendingState, or why the fleet could not be asked.
func (w fleetWait) status(doneState, pendingState string) string {
	switch {
	case w.unknown != "":
		return w.unknown
	case w.progress.done():
		return doneState
	}
	return pendingState
}

func viewCAs(cas []*x509.Certificate) []caView {
	out := make([]caView, 0, len(cas))
	for _, c := range cas {
		out = append(out, viewCA(c))
	}
	return out
}
