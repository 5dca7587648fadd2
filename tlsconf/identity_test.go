package tlsconf

import "testing"

func TestGlob(t *testing.T) {
	for _, tc := range []struct {
		pattern, s string
		want       bool
	}{
		{"", "", true},
		{"*", "", true},
		{"*", "anything/with/slashes", true},
		{"abc", "abc", true},
		{"abc", "abd", false},
		{"a*c", "abbbc", true},
		{"a*c", "abbbd", false},
		{"spiffe://*/route/db/*", "spiffe://space.example/route/db/client/1", true},
		{"spiffe://*/route/db/*", "spiffe://space.example/route/dbx/client/1", false},
		{"spiffe://*/route/db/*", "spiffe://x/route/cache/route/db/", true}, // * spans '/': the trust domain is not pinned by the default
		{"*.example.com", "a.b.example.com", true},
		{"**a", "bbba", true},
		{"a*", "b", false},
	} {
		if got := glob(tc.pattern, tc.s); got != tc.want {
			t.Errorf("glob(%q, %q) = %v, want %v", tc.pattern, tc.s, got, tc.want)
		}
	}
}

func TestClientPatterns(t *testing.T) {
	forDB := Identity{CommonName: "app", URIs: []string{RouteURI("space.example", "db", "0001")}, Serial: "01", Subject: "CN=app"}
	forCache := Identity{CommonName: "app", URIs: []string{RouteURI("space.example", "cache", "0002")}, Serial: "02", Subject: "CN=app"}
	plain := Identity{CommonName: "alice", DNSNames: []string{"Worker-1.Example.com"}, Serial: "03", Subject: "CN=alice"}
	for _, tc := range []struct {
		name     string
		patterns []string
		id       Identity
		want     bool
	}{
		{"default accepts its route's cert", nil, forDB, true},
		{"default refuses another route's cert", nil, forCache, false},
		{"default refuses a cert without route URI", nil, plain, false},
		{"any", []string{"*"}, plain, true},
		{"cn glob", []string{"cn:ali*"}, plain, true},
		{"cn mismatch", []string{"cn:bob"}, plain, false},
		{"dns case-insensitive", []string{"dns:*.example.com"}, plain, true},
		{"uri exact", []string{"uri:" + RouteURI("space.example", "cache", "0002")}, forCache, true},
		{"one of several", []string{"cn:bob", "uri:spiffe://space.example/route/cache/*"}, forCache, true},
		{"empty list", []string{}, forDB, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := NewClientPatterns("db", tc.patterns).Allows(tc.id); got != tc.want {
				t.Fatalf("Allows = %v, want %v", got, tc.want)
			}
		})
	}
	msg := NewClientPatterns("db", nil).Refusal(forCache)
	if want := "client certificate (serial 02, CN=app) is issued for route cache, not for route db; use a certificate issued for db"; msg != want {
		t.Errorf("Refusal = %q, want %q", msg, want)
	}
	msg = NewClientPatterns("db", []string{"cn:bob"}).Refusal(plain)
	if want := "client certificate (serial 03, CN=alice) is not allowed on route db (allowed: cn:bob)"; msg != want {
		t.Errorf("Refusal = %q, want %q", msg, want)
	}
}

func TestCheckClientPattern(t *testing.T) {
	for _, ok := range []string{"*", "cn:x", "dns:*.a", "uri:spiffe://*"} {
		if err := CheckClientPattern(ok); err != nil {
			t.Errorf("CheckClientPattern(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "cn:", "CN=x", "email:a@b", "**"} {
		if err := CheckClientPattern(bad); err == nil {
			t.Errorf("CheckClientPattern(%q): no error", bad)
		}
	}
}
