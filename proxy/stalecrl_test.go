package proxy

import (
	"fmt"
	"math/big"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spacegate/spacegate/tlsconf"
)

// TestStaleCRLPerIssuer: with one CRL per CA, each CRL's nextUpdate is
// judged and published on its own: only the stale one is warned of, and
// spacegate_crl_next_update_timestamp_seconds has a series per issuer.
func TestStaleCRLPerIssuer(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true})
	second, err := tlsconf.NewCA("spacegate second CA", tlsconf.KeyECDSAP256, 0)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Second)
	fresh, err := e.pki.CA.CRL(nil, big.NewInt(10), now.Add(-time.Hour), now.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	staleNext := now.Add(-time.Hour)
	stale, err := second.CRL(nil, big.NewInt(3), now.Add(-48*time.Hour), staleNext)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := os.ReadFile(e.pki.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	// The bundle first, then the CRLs: a CRL of a CA not yet in the
	// bundle would be refused.
	renameWrite(t, e.pki.CAFile, slices.Concat(bundle, second.CertPEM))
	e.awaitGeneration(t, 2)
	renameWrite(t, e.pki.CRLFile, slices.Concat(fresh, stale))
	e.awaitGeneration(t, 3)

	var issuers []string
	for _, l := range e.logs.FilterMessageSnippet("CRL is past its nextUpdate").All() {
		issuers = append(issuers, fmt.Sprint(l.ContextMap()["issuer"]))
	}
	if len(issuers) == 0 || slices.ContainsFunc(issuers, func(s string) bool { return s != "CN=spacegate second CA" }) {
		t.Errorf("stale-CRL warnings name issuers %q, want only CN=spacegate second CA", issuers)
	}
	metrics := e.get(t, "/metrics")
	for issuer, next := range map[string]time.Time{"CN=spacegate test CA": now.Add(24 * time.Hour), "CN=spacegate second CA": staleNext} {
		line := fmt.Sprintf(`spacegate_crl_next_update_timestamp_seconds{issuer=%q,route="db"} %s`, issuer, strconv.FormatFloat(float64(next.Unix()), 'g', -1, 64))
		if !strings.Contains(metrics, line) {
			t.Errorf("/metrics lacks %s", line)
		}
	}
}
