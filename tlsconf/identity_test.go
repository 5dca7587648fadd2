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

// TestGlobPath: in uri: patterns * stays inside one path segment, ** and
// a final * cross them.
func TestGlobPath(t *testing.T) {
	const db1 = "spiffe://space.example/route/db/client/0001"
	for _, tc := range []struct {
		pattern, s string
		want       bool
	}{
		{"", "", true},
		{"*", "", true},
		{"*", "a/b", true}, // a final * takes the rest
		{"**", "a/b/c", true},
		{"a*c", "abbc", true},
		{"a*c", "ab/bc", false},
		{"a**c", "ab/bc", true},
		{"a/*/c", "a/b/c", true},
		{"a/*/c", "a/b/b/c", false},
		{"a/**/c", "a/b/b/c", true},
		{"a/*/c", "a//c", true},              // an empty segment is one
		{"spiffe://*/route/db/*", db1, true}, // the default pattern
		{"spiffe://*/route/db/*", "spiffe://space.example/route/dbx/client/0001", false},
		{"spiffe://*/route/db/*", "spiffe://x/route/cache/route/db/", false}, // the trust domain is one segment
		{"spiffe://*/route/db/*", "spiffe://x/route/cache/client/route/db/1", false},
		{"spiffe://**/route/db/*", "spiffe://x/route/cache/route/db/1", true},
		{"spiffe://space.example/route/db/client/*", db1, true},
		{"spiffe://space.example/route/*/client/*", db1, true},
		{"spiffe://space.example/route/*", db1, true},
		{"spiffe://space.example/*/db/*", db1, true},
		{"spiffe://space.example/*/client/*", db1, false},
		{"spiffe://space.example/**/client/*", db1, true},
		{"spiffe://*.example/route/db/*", db1, true},
		{"spiffe:*", db1, true},
		{"spiffe:*/x", "spiffe://x", false},
		{"***", "a/b", true},
		{"a***", "a/b", true},
	} {
		if got := globPath(tc.pattern, tc.s); got != tc.want {
			t.Errorf("globPath(%q, %q) = %v, want %v", tc.pattern, tc.s, got, tc.want)
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
		{"default refuses another route's path ending in /route/db/", nil,
			Identity{URIs: []string{"spiffe://x/route/cache/route/db/1"}}, false},
		{"uri * within the trust domain", []string{"uri:spiffe://*.example/route/db/client/*"}, forDB, true},
		{"uri * does not cross /", []string{"uri:spiffe://space.example/*/client/*"}, forDB, false},
		{"uri ** crosses /", []string{"uri:spiffe://space.example/**/client/*"}, forDB, true},
		{"cn * crosses .", []string{"cn:a*z"}, Identity{CommonName: "a.b/c.z"}, true},
		{"dns * crosses .", []string{"dns:*.example.com"}, Identity{DNSNames: []string{"a.b.example.com"}}, true},
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
