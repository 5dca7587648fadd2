package tlsconf

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The seed corpora are in testdata/fuzz/FuzzXxx and run with go test. Run a
// target for longer with
//
//	go test -run '^$' -fuzz FuzzLoadCRL -fuzztime 2m ./tlsconf/

// FuzzLoadCRL fuzzes what Load does with the bytes of a CRL file.
func FuzzLoadCRL(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		crls, err := parseCRLs(data)
		if err != nil {
			if crls != nil {
				t.Fatalf("CRLs returned with error %v", err)
			}
			return
		}
		if len(crls) == 0 {
			t.Fatal("no CRL without error")
		}
		for _, crl := range crls {
			for _, e := range crl.RevokedCertificateEntries {
				_ = FormatSerial(e.SerialNumber)
			}
			// A CRL read from PEM is the same CRL when read from its DER.
			again, err := parseCRLs(crl.Raw)
			if err != nil {
				t.Fatalf("CRL parsed from PEM does not parse from its DER: %v", err)
			}
			if len(again) != 1 || !bytes.Equal(again[0].Raw, crl.Raw) {
				t.Fatal("CRL parsed from its own DER differs")
			}
		}
	})
}

// FuzzLoadCerts fuzzes what Load does with the bytes of a certificate
// file, a key file and a client CA bundle, and what Verify then reads from
// a certificate that parsed.
func FuzzLoadCerts(f *testing.F) {
	now := time.Now()
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, certErr := parseCertsPEM(data)
		if (certErr == nil) != (len(certs) > 0) {
			t.Fatalf("%d certificates with error %v", len(certs), certErr)
		}
		key, keyErr := parseKeyPEM(data)
		if (keyErr == nil) != (key != nil) {
			t.Fatalf("key %T with error %v", key, keyErr)
		}
		cas, pool, caErr := parseCAsPEM(data)
		switch {
		case caErr == nil && (pool == nil || len(cas) == 0 || len(cas) != len(certs)):
			t.Fatalf("CA bundle of %d certificates (of %d), pool %v, without error", len(cas), len(certs), pool)
		case caErr != nil && (cas != nil || pool != nil):
			t.Fatalf("CA bundle returned with error %v", caErr)
		}
		for _, ca := range cas {
			if ca.BasicConstraintsValid && !ca.IsCA {
				t.Fatalf("leaf %s accepted as a CA", ca.Subject)
			}
		}
		for _, c := range certs {
			id := identityOf(c)
			if id.Serial != FormatSerial(c.SerialNumber) {
				t.Fatalf("identity serial %q, want %q", id.Serial, FormatSerial(c.SerialNumber))
			}
			_ = checkKey(c.PublicKey)
			_ = clampTime(now, c.NotBefore, c.NotAfter)
		}
		if len(certs) > 0 && key != nil {
			_ = keyMatches(certs[0], key)
		}
		// A bundle that loads can verify: Verify must not panic on a
		// chain made of whatever parsed.
		if caErr == nil {
			m := &Material{CAs: cas, ClientCAs: pool, cache: newVerifyCache()}
			_, err := m.Verify(certs, now)
			if err != nil && err.Error() == "" {
				t.Fatal("empty refusal sentence")
			}
		}
	})
}

// FuzzGlob checks glob against a slow matcher that is obviously right, and
// that it stays fast on inputs built to make a backtracking matcher
// exponential.
func FuzzGlob(f *testing.F) {
	f.Add(strings.Repeat("*a", 50), strings.Repeat("a", 5000))
	f.Add(strings.Repeat("*a", 50)+"b", strings.Repeat("a", 5000))
	f.Add("*"+strings.Repeat("a", 60)+"b", strings.Repeat("a", 5000))
	f.Fuzz(func(t *testing.T, pattern, s string) {
		got := glob(pattern, s)
		if len(pattern)*len(s) > 1<<20 {
			return // too slow for the reference matcher
		}
		if want := globRef(pattern, s); got != want {
			t.Fatalf("glob(%q, %q) = %v, want %v", pattern, s, got, want)
		}
	})
}

// FuzzGlobPath checks globPath against a regular expression built from
// the pattern: ** and a final * as .*, any other * as [^/]*.
func FuzzGlobPath(f *testing.F) {
	f.Add("spiffe://*/route/db/*", "spiffe://space.example/route/db/client/0001")
	f.Add("spiffe://*/route/db/*", "spiffe://x/route/cache/route/db/")
	f.Add("a/**/c*d/*", "a/b/b/cxd/e/f")
	f.Fuzz(func(t *testing.T, pattern, s string) {
		if len(pattern)*len(s) > 1<<20 {
			return
		}
		var re strings.Builder
		re.WriteString(`^(?s:`)
		for i := 0; i < len(pattern); i++ {
			switch {
			case pattern[i] == '*' && i+1 < len(pattern) && pattern[i+1] == '*':
				re.WriteString(`.*`)
				i++
			case pattern[i] == '*' && i+1 == len(pattern):
				re.WriteString(`.*`)
			case pattern[i] == '*':
				re.WriteString(`[^/]*`)
			default:
				fmt.Fprintf(&re, `\x{%x}`, pattern[i])
			}
		}
		re.WriteString(`)$`)
		// Byte-wise, as globPath: Latin-1 runes stand for the bytes.
		b := make([]rune, len(s))
		for i := range len(s) {
			b[i] = rune(s[i])
		}
		want := regexp.MustCompile(re.String()).MatchString(string(b))
		if got := globPath(pattern, s); got != want {
			t.Fatalf("globPath(%q, %q) = %v, regexp %s says %v", pattern, s, got, re.String(), want)
		}
	})
}

// globRef is glob by dynamic programming over every prefix pair: quadratic
// and plainly correct. m[j] says whether pattern[:i] matches s[:j].
func globRef(pattern, s string) bool {
	m := make([]bool, len(s)+1)
	m[0] = true
	for i := 0; i < len(pattern); i++ {
		next := make([]bool, len(s)+1)
		if pattern[i] == '*' {
			// * matches s[:j] if pattern[:i] matches any s[:k], k <= j.
			seen := false
			for j := range m {
				seen = seen || m[j]
				next[j] = seen
			}
		} else {
			for j := 1; j <= len(s); j++ {
				next[j] = m[j-1] && pattern[i] == s[j-1]
			}
		}
		m = next
	}
	return m[len(s)]
}

func TestGlobRef(t *testing.T) {
	tests := []struct {
		pattern, s string
		want       bool
	}{
		{"", "", true},
		{"", "a", false},
		{"*", "", true},
		{"*", "anything/at/all", true},
		{"a*c", "abbbc", true},
		{"a*c", "abbb", false},
		{"spiffe://*/route/db/*", "spiffe://space/route/db/client/x", true},
		{"spiffe://*/route/db/*", "spiffe://space/route/dbx/client/x", false},
		{"*a*a", "aa", true},
		{"*a*a", "a", false},
	}
	for _, tt := range tests {
		if got := globRef(tt.pattern, tt.s); got != tt.want {
			t.Errorf("globRef(%q, %q) = %v, want %v", tt.pattern, tt.s, got, tt.want)
		}
		if got := glob(tt.pattern, tt.s); got != tt.want {
			t.Errorf("glob(%q, %q) = %v, want %v", tt.pattern, tt.s, got, tt.want)
		}
	}
}
