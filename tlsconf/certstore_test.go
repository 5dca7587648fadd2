package tlsconf

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"
)

// testStore is a CertStore in a new directory with a clock the test moves,
// a space CA and a server certificate.
type testStore struct {
	*CertStore
	now time.Time
	mu  sync.Mutex
}

func (ts *testStore) setNow(t time.Time) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.now = t
}

func newTestStore(t *testing.T) *testStore {
	t.Helper()
	ts := &testStore{now: time.Now()}
	ts.CertStore = &CertStore{Dir: filepath.Join(t.TempDir(), "pki"), Now: func() time.Time {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		return ts.now
	}}
	ctx := context.Background()
	if _, err := ts.InitCA(ctx, CAOptions{}); err != nil {
		t.Fatalf("InitCA: %v", err)
	}
	if _, err := ts.IssueServer(ctx, []string{"localhost", "127.0.0.1"}, ts.path("server.crt"), ts.path("server.key")); err != nil {
		t.Fatalf("IssueServer: %v", err)
	}
	return ts
}

// material loads the store's files as the gate does.
func (ts *testStore) material(t *testing.T) *Material {
	t.Helper()
	m, err := Load(Files{CertFile: ts.path("server.crt"), KeyFile: ts.path("server.key"), ClientCAFile: ts.CAFile(), CRLFile: ts.CRLFile()})
	if err != nil {
		t.Fatalf("the gate would not load the store's files: %v", err)
	}
	return m
}

// verify checks client certificate id against the store's files as the gate
// does, and returns the refusal reason.
func (ts *testStore) verify(t *testing.T, id string) Reason {
	t.Helper()
	b, err := ts.ReadClient(id)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ts.material(t).Verify(parseChain(t, b.ChainPEM), time.Now())
	var ve *VerifyError
	if errors.As(err, &ve) {
		return ve.Reason
	}
	if err != nil {
		t.Fatal(err)
	}
	return ReasonOK
}

// crlOf returns the CRL that ca signed in the store's CRL file, failing t
// if there is none.
func (ts *testStore) crlOf(t *testing.T, ca *x509.Certificate) *x509.RevocationList {
	t.Helper()
	crls, err := ts.readCRLs([]*x509.Certificate{ca})
	if err != nil {
		t.Fatal(err)
	}
	if crls[0] == nil {
		t.Fatalf("the CRL file holds no CRL of %s", ca.Subject)
	}
	return crls[0].crl
}

func parseChain(t *testing.T, pemData []byte) []*x509.Certificate {
	t.Helper()
	blocks, err := decodePEM(pemData)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := parseCertificates(blocks)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

func TestCertStoreInitCA(t *testing.T) {
	ts := newTestStore(t)
	for name, want := range map[string]fs.FileMode{
		"": 0o700 | fs.ModeDir, CAFileName: 0o644, CAKeyName: 0o600, CRLFileName: 0o644,
	} {
		fi, err := os.Stat(ts.path(name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&(fs.ModePerm|fs.ModeDir) != want {
			t.Errorf("%q has mode %v, want %v", name, fi.Mode(), want)
		}
	}
	signing, err := ts.CA()
	if err != nil {
		t.Fatal(err)
	}
	crl := ts.crlOf(t, signing.Cert)
	if len(crl.RevokedCertificateEntries) != 0 || crl.Number.Int64() != 1 {
		t.Errorf("new CRL lists %d entries with number %v, want none and number 1", len(crl.RevokedCertificateEntries), crl.Number)
	}
	ca, err := ts.CA()
	if err != nil {
		t.Fatal(err)
	}
	if ca.Cert.Subject.CommonName != DefaultCAName || keyTypeOf(ca.Key) != KeyECDSAP256 {
		t.Errorf("CA is %q with a %s key, want %q with ECDSA P-256", ca.Cert.Subject.CommonName, keyTypeOf(ca.Key), DefaultCAName)
	}
	ts.material(t) // the gate takes the files as they are

	before, _ := os.ReadFile(ts.CAFile())
	if _, err := ts.InitCA(context.Background(), CAOptions{}); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second InitCA = %v, want fs.ErrExist", err)
	}
	if after, _ := os.ReadFile(ts.CAFile()); !bytes.Equal(before, after) {
		t.Errorf("second InitCA replaced the CA")
	}
	if _, err := ts.IssueServer(context.Background(), []string{"localhost"}, ts.path("server.crt"), ts.path("server.key")); !errors.Is(err, fs.ErrExist) {
		t.Errorf("IssueServer over existing files = %v, want fs.ErrExist", err)
	}
}

func TestCertStoreInitRSA(t *testing.T) {
	s := &CertStore{Dir: t.TempDir()}
	ca, err := s.InitCA(context.Background(), CAOptions{CommonName: "rsa CA", KeyType: KeyRSA2048})
	if err != nil {
		t.Fatal(err)
	}
	if keyTypeOf(ca.Key) != KeyRSA2048 || ca.Cert.Subject.CommonName != "rsa CA" {
		t.Errorf("InitCA with RSA gave %q with a %s key", ca.Cert.Subject.CommonName, keyTypeOf(ca.Key))
	}
}

func TestCertStoreNoCA(t *testing.T) {
	s := &CertStore{Dir: t.TempDir()}
	if _, err := s.Create(context.Background(), ClientRequest{Routes: []string{"db"}}); !errors.Is(err, ErrNoCA) {
		t.Errorf("Create without a CA = %v, want ErrNoCA", err)
	}
	if _, err := s.RotateCA(context.Background(), CAOptions{}); !errors.Is(err, ErrNoCA) {
		t.Errorf("RotateCA without a CA = %v, want ErrNoCA", err)
	}
}

func TestCertStoreCreate(t *testing.T) {
	ts := newTestStore(t)
	created := ts.now
	cc, err := ts.Create(context.Background(), ClientRequest{Routes: []string{"db", "cache"}, TrustDomain: "space.example"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := ts.ReadClient(cc.ID)
	if err != nil {
		t.Fatal(err)
	}
	c := b.Cert
	wantURIs := []string{
		"spiffe://space.example/route/db/client/" + cc.ID,
		"spiffe://space.example/route/cache/client/" + cc.ID,
	}
	var gotURIs []string
	for _, u := range c.URIs {
		gotURIs = append(gotURIs, u.String())
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"common name", c.Subject.CommonName, "db-client"},
		{"URI SANs", gotURIs, wantURIs},
		{"meta URIs", cc.URIs, wantURIs},
		{"ext key usage", c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
		{"NotAfter", c.NotAfter.Unix(), created.AddDate(0, 13, 0).Unix()},
		{"ExpiresAt", cc.ExpiresAt.Unix(), c.NotAfter.Unix()},
		{"serial", cc.Serial, FormatSerial(c.SerialNumber)},
		{"status", cc.Status(created), StatusReady},
		{"chain length", len(parseChain(t, b.ChainPEM)), 2},
	}
	for _, ck := range checks {
		if !reflect.DeepEqual(ck.got, ck.want) {
			t.Errorf("%s = %v, want %v", ck.what, ck.got, ck.want)
		}
	}
	if r := ts.verify(t, cc.ID); r != ReasonOK {
		t.Errorf("the gate refuses a new certificate: %v", r)
	}
	der, err := b.PKCS8DER()
	if err != nil {
		t.Fatal(err)
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		t.Fatalf("PKCS8DER does not parse as PKCS#8: %v", err)
	}
	if signer, ok := k.(crypto.Signer); !ok || !keyMatches(c, signer) {
		t.Errorf("PKCS8DER holds a key that does not match the certificate")
	}
	certFile, keyFile := ts.ClientFiles(cc.ID)
	for f, want := range map[string]fs.FileMode{certFile: 0o644, keyFile: 0o600, filepath.Dir(certFile): 0o700 | fs.ModeDir} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&(fs.ModePerm|fs.ModeDir) != want {
			t.Errorf("%s has mode %v, want %v", f, fi.Mode(), want)
		}
	}
	got, err := ts.Get(cc.ID)
	if err != nil || got.ID != cc.ID || !slices.Equal(got.Routes, []string{"db", "cache"}) {
		t.Errorf("Get = %+v, %v", got, err)
	}
}

func TestCertStatus(t *testing.T) {
	exp := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		now     time.Time
		revoked bool
		want    CertStatus
	}{
		{"a year before", exp.AddDate(-1, 0, 0), false, StatusReady},
		{"76 days before", exp.Add(-76 * 24 * time.Hour), false, StatusReady},
		{"75 days before", exp.Add(-RenewBefore), false, StatusExpiring},
		{"a day before", exp.Add(-24 * time.Hour), false, StatusExpiring},
		{"at expiry", exp, false, StatusExpired},
		{"after", exp.Add(time.Hour), false, StatusExpired},
		{"revoked", exp.AddDate(-1, 0, 0), true, StatusRevoked},
		{"revoked and expired", exp.Add(time.Hour), true, StatusRevoked},
	}
	for _, tt := range tests {
		cc := ClientCert{ExpiresAt: exp}
		if tt.revoked {
			cc.RevokedAt = exp.AddDate(-1, 0, 0)
		}
		if got := cc.Status(tt.now); got != tt.want {
			t.Errorf("%s: Status = %s, want %s", tt.name, got, tt.want)
		}
	}
}

func TestCertStoreRevoke(t *testing.T) {
	ts := newTestStore(t)
	ctx := context.Background()
	a, _ := ts.Create(ctx, ClientRequest{Routes: []string{"db"}})
	b, _ := ts.Create(ctx, ClientRequest{Routes: []string{"db"}})
	ca, _ := ts.CA()
	before := ts.crlOf(t, ca.Cert)
	rc, err := ts.Revoke(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rc.Status(ts.now) != StatusRevoked {
		t.Errorf("revoked certificate has status %s", rc.Status(ts.now))
	}
	if got, _ := ts.Get(a.ID); got.RevokedAt.IsZero() {
		t.Errorf("meta.json does not record the revocation")
	}
	if r := ts.verify(t, a.ID); r != ReasonCertRevoked {
		t.Errorf("the gate's verdict on a revoked certificate: %v, want %v", r, ReasonCertRevoked)
	}
	if r := ts.verify(t, b.ID); r != ReasonOK {
		t.Errorf("revoking one certificate refused another: %v", r)
	}
	after := ts.crlOf(t, ca.Cert)
	if after.Number.Cmp(before.Number) <= 0 {
		t.Errorf("CRL number went from %v to %v, want it to grow", before.Number, after.Number)
	}
	if _, err := ts.Revoke(ctx, a.ID); !errors.Is(err, ErrAlreadyRevoked) {
		t.Errorf("second Revoke = %v, want ErrAlreadyRevoked", err)
	}
	for _, id := range []string{"00000000-0000-4000-8000-000000000000", "../../etc", "", "not-an-id"} {
		if _, err := ts.Revoke(ctx, id); !errors.Is(err, ErrCertNotFound) {
			t.Errorf("Revoke(%q) = %v, want ErrCertNotFound", id, err)
		}
	}
}

func TestCertStoreRotateCA(t *testing.T) {
	ts := newTestStore(t)
	ctx := context.Background()
	oldCA, _ := ts.CA()
	oldCert, err := ts.Create(ctx, ClientRequest{Routes: []string{"db"}})
	if err != nil {
		t.Fatal(err)
	}
	keep, _ := ts.Create(ctx, ClientRequest{Routes: []string{"db"}})

	newCA, err := ts.RotateCA(ctx, CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := newCA.Cert.Subject.CommonName, DefaultCAName+" G2"; got != want {
		t.Errorf("rotated CA is named %q, want %q", got, want)
	}
	bundle, err := ts.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	if len(bundle) != 2 || !bundle[0].Equal(newCA.Cert) || !bundle[1].Equal(oldCA.Cert) {
		t.Fatalf("bundle after rotation holds %d certificates, want the new CA then the old one", len(bundle))
	}
	if signer, _ := ts.CA(); !signer.Cert.Equal(newCA.Cert) {
		t.Errorf("signing CA after rotation is %s, want the new CA", signer.Cert.Subject)
	}
	retired := ts.path(retiredDir, fmt.Sprintf("%x.key", oldCA.Cert.SubjectKeyId))
	if fi, err := os.Stat(retired); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("old CA key not kept at %s with mode 0600: %v", retired, err)
	}

	newCert, err := ts.Create(ctx, ClientRequest{Routes: []string{"db"}})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := ts.ReadClient(newCert.ID); b.Cert.CheckSignatureFrom(newCA.Cert) != nil {
		t.Errorf("a certificate made after rotation is not signed by the new CA")
	}
	for _, id := range []string{oldCert.ID, keep.ID, newCert.ID} {
		if r := ts.verify(t, id); r != ReasonOK {
			t.Errorf("after rotation the gate refuses %s: %v", id, r)
		}
	}

	// The new CA has a CRL of its own from the start.
	newCRL := ts.crlOf(t, newCA.Cert)
	if n := newCRL.Number.Int64(); n != 1 || len(newCRL.RevokedCertificateEntries) != 0 {
		t.Errorf("new CA's first CRL: number %d with %d entries, want 1 and none", n, len(newCRL.RevokedCertificateEntries))
	}
	// A certificate of the old CA revoked after the rotation goes into the
	// old CA's CRL, signed with the retired key; the new CA's is untouched.
	oldBefore := ts.crlOf(t, oldCA.Cert)
	if _, err := ts.Revoke(ctx, oldCert.ID); err != nil {
		t.Fatal(err)
	}
	oldAfter := ts.crlOf(t, oldCA.Cert)
	if oldAfter.Number.Cmp(oldBefore.Number) <= 0 || len(oldAfter.RevokedCertificateEntries) != 1 {
		t.Errorf("old CA's CRL after revoking one of its certificates: number %v (was %v), %d entries; want a higher number and 1 entry",
			oldAfter.Number, oldBefore.Number, len(oldAfter.RevokedCertificateEntries))
	}
	if got := ts.crlOf(t, newCA.Cert); !bytes.Equal(got.Raw, newCRL.Raw) {
		t.Errorf("revoking an old-CA certificate signed the new CA's CRL again (number %v)", got.Number)
	}
	if r := ts.verify(t, oldCert.ID); r != ReasonCertRevoked {
		t.Errorf("old-CA certificate revoked after rotation: %v, want %v", r, ReasonCertRevoked)
	}
	if r := ts.verify(t, keep.ID); r != ReasonOK {
		t.Errorf("the other old-CA certificate: %v, want ok", r)
	}

	third, err := ts.RotateCA(ctx, CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := third.Cert.Subject.CommonName, DefaultCAName+" G3"; got != want {
		t.Errorf("second rotation named the CA %q, want %q", got, want)
	}
	if b, _ := ts.Bundle(); len(b) != 3 {
		t.Errorf("bundle after two rotations holds %d CAs, want 3", len(b))
	}
}

func TestCertStoreRenew(t *testing.T) {
	ts := newTestStore(t)
	ctx := context.Background()
	start := ts.now
	db, _ := ts.Create(ctx, ClientRequest{Routes: []string{"db"}, Name: "alice"})
	cache, _ := ts.Create(ctx, ClientRequest{Routes: []string{"cache"}})
	short, _ := ts.Create(ctx, ClientRequest{Routes: []string{"db"}, ValidFor: 30 * 24 * time.Hour})
	revoked, _ := ts.Create(ctx, ClientRequest{Routes: []string{"db"}, ValidFor: 30 * 24 * time.Hour})
	if _, err := ts.Revoke(ctx, revoked.ID); err != nil {
		t.Fatal(err)
	}

	onlyDB := func(c *ClientCert) bool { return c.HasRoute("db") }
	replacement := map[string]string{} // old id -> new id, as renewed so far
	steps := []struct {
		name   string
		now    time.Time
		filter func(*ClientCert) bool
		want   func() []string // ids renewed
	}{
		{"only the short one is in the window", start.Add(time.Hour), nil, func() []string { return []string{short.ID} }},
		{"nothing twice", start.Add(2 * time.Hour), nil, func() []string { return nil }},
		// The 13-month replacement of the short one, made an hour after
		// db, is in the window now too.
		{"60 days before expiry, route db", start.AddDate(0, 13, -60).Add(2 * time.Hour), onlyDB,
			func() []string { return []string{db.ID, replacement[short.ID]} }},
		{"then the other route", start.AddDate(0, 13, -60).Add(2 * time.Hour), nil, func() []string { return []string{cache.ID} }},
	}
	for _, st := range steps {
		ts.setNow(st.now)
		got, err := ts.Renew(ctx, RenewOptions{Filter: st.filter})
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		var ids []string
		want := st.want()
		for _, r := range got {
			ids = append(ids, r.Old.ID)
			replacement[r.Old.ID] = r.New.ID
			if r.New.Replaces != r.Old.ID || r.New.Name != r.Old.Name || !slices.Equal(r.New.Routes, r.Old.Routes) {
				t.Errorf("%s: replacement %+v does not match %+v", st.name, r.New, r.Old)
			}
			if r.New.Status(st.now) != StatusReady {
				t.Errorf("%s: replacement has status %s, want ready", st.name, r.New.Status(st.now))
			}
			if old, _ := ts.Get(r.Old.ID); old.ReplacedBy != r.New.ID {
				t.Errorf("%s: old certificate does not name its replacement", st.name)
			}
		}
		if !slices.Equal(ids, want) {
			t.Errorf("%s: renewed %v, want %v", st.name, ids, want)
		}
	}
}

func TestCertStoreConcurrentCreate(t *testing.T) {
	ts := newTestStore(t)
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			s := &CertStore{Dir: ts.Dir}
			_, err := s.Create(context.Background(), ClientRequest{Routes: []string{"db"}})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	certs, err := ts.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != n {
		t.Errorf("List after %d concurrent creates gives %d certificates", n, len(certs))
	}
}

func TestNextGeneration(t *testing.T) {
	for in, want := range map[string]string{
		"space CA": "space CA G2", "space CA G2": "space CA G3", "CA G9": "CA G10", "G2": "G2 G2",
	} {
		if got := nextGeneration(in); got != want {
			t.Errorf("nextGeneration(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCertStorePruneCAs(t *testing.T) {
	ctx := context.Background()
	type setup struct {
		ts            *testStore
		oldCA, newCA  *CA
		live, expires *ClientCert // of the old CA
		fresh         *ClientCert // of the new CA
	}
	newSetup := func(t *testing.T) *setup {
		ts := newTestStore(t)
		st := &setup{ts: ts}
		st.oldCA, _ = ts.CA()
		var err error
		if st.live, err = ts.Create(ctx, ClientRequest{Routes: []string{"db"}}); err != nil {
			t.Fatal(err)
		}
		if st.expires, err = ts.Create(ctx, ClientRequest{Routes: []string{"db"}, ValidFor: time.Hour}); err != nil {
			t.Fatal(err)
		}
		if st.newCA, err = ts.RotateCA(ctx, CAOptions{}); err != nil {
			t.Fatal(err)
		}
		if st.fresh, err = ts.Create(ctx, ClientRequest{Routes: []string{"db"}}); err != nil {
			t.Fatal(err)
		}
		return st
	}
	liveIDs := func(p *Pruned) []string {
		var ids []string
		for _, l := range p.Live {
			ids = append(ids, l.Cert.ID)
		}
		return ids
	}

	t.Run("refused while old-CA certificates live", func(t *testing.T) {
		st := newSetup(t)
		before, _ := os.ReadFile(st.ts.CAFile())
		p, err := st.ts.PruneCAs(ctx, false)
		if !errors.Is(err, ErrCAInUse) {
			t.Fatalf("PruneCAs = %v, want ErrCAInUse", err)
		}
		// The store's clock stands still, so List orders them by id.
		got, want := liveIDs(p), []string{st.live.ID, st.expires.ID}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("live certificates %v, want %v", got, want)
		}
		if len(p.Removed) != 0 {
			t.Errorf("refused prune reports %d CAs removed", len(p.Removed))
		}
		if after, _ := os.ReadFile(st.ts.CAFile()); !bytes.Equal(before, after) {
			t.Error("refused prune changed the bundle")
		}
	})

	t.Run("once revoked or expired", func(t *testing.T) {
		st := newSetup(t)
		if _, err := st.ts.Revoke(ctx, st.live.ID); err != nil {
			t.Fatal(err)
		}
		st.ts.setNow(time.Now().Add(2 * time.Hour))
		p, err := st.ts.PruneCAs(ctx, false)
		if err != nil {
			t.Fatalf("PruneCAs: %v", err)
		}
		if len(p.Removed) != 1 || !p.Removed[0].Equal(st.oldCA.Cert) || len(p.Kept) != 1 || !p.Kept[0].Equal(st.newCA.Cert) || p.Forced {
			t.Errorf("Pruned = %+v, want the old CA removed and the new one kept", p)
		}
		if b, _ := st.ts.Bundle(); len(b) != 1 || !b[0].Equal(st.newCA.Cert) {
			t.Errorf("bundle after prune holds %d CAs, want the new CA alone", len(b))
		}
		crls, _ := st.ts.readCRLs([]*x509.Certificate{st.oldCA.Cert, st.newCA.Cert})
		if crls[0] != nil || crls[1] == nil {
			t.Errorf("CRL file after prune: old CA's CRL %v, new CA's %v; want only the new one", crls[0] != nil, crls[1] != nil)
		}
		// The gate loads the result; the old CA's certificates are foreign.
		if r := st.ts.verify(t, st.live.ID); r != ReasonCertUntrusted {
			t.Errorf("old-CA certificate after prune: %v, want %v", r, ReasonCertUntrusted)
		}
		if r := st.ts.verify(t, st.fresh.ID); r != ReasonOK {
			t.Errorf("new-CA certificate after prune: %v, want ok", r)
		}
		if p, err := st.ts.PruneCAs(ctx, false); err != nil || len(p.Removed) != 0 {
			t.Errorf("second prune: %+v, %v; want nothing to do", p, err)
		}
	})

	t.Run("force", func(t *testing.T) {
		st := newSetup(t)
		p, err := st.ts.PruneCAs(ctx, true)
		if err != nil {
			t.Fatalf("PruneCAs(force): %v", err)
		}
		if !p.Forced || len(p.Removed) != 1 || len(p.Live) != 2 {
			t.Errorf("Pruned = %+v, want forced, 1 CA removed, 2 live certificates named", p)
		}
		if r := st.ts.verify(t, st.live.ID); r != ReasonCertUntrusted {
			t.Errorf("old-CA certificate after a forced prune: %v, want %v", r, ReasonCertUntrusted)
		}
	})
}
