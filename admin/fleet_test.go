package admin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

// replicaStatus is the status of a replica serving route db with the
// rules digest and CRL number given.
func replicaStatus(name, fingerprint, digest, crlNumber string) Status {
	return Status{Name: name, Fingerprint: fingerprint, Generation: 1, Ready: true,
		Routes: []RouteStatus{{Name: "db", RulesDigest: digest, RuleIDs: []string{"id-1"}, ServerCertSerial: "0a",
			CAFingerprints: []string{"ab"}, CRLs: []CRL{{Issuer: "CN=space CA", Number: crlNumber}}}},
		Connections: []Conn{{ID: "c1", Route: "db"}}}
}

// fleetOf starts one admin endpoint per status, every one with token and
// the fleet of all of them plus extra, and returns their URLs.
func fleetOf(t *testing.T, token string, extra []string, statuses ...Status) ([]*httptest.Server, []*gate) {
	t.Helper()
	var srvs []*httptest.Server
	var gates []*gate
	for _, st := range statuses {
		g := &gate{status: st, ready: true, token: []byte(token)}
		srv := httptest.NewServer(Handler(g, Options{Public: true}))
		t.Cleanup(srv.Close)
		srvs = append(srvs, srv)
		gates = append(gates, g)
	}
	var urls []string
	for _, s := range srvs {
		urls = append(urls, s.URL)
	}
	for _, g := range gates {
		g.set(func(g *gate) { g.fleet = append(slices.Clone(urls), extra...) })
	}
	return srvs, gates
}

func getFleet(t *testing.T, srv *httptest.Server, token string) Fleet {
	t.Helper()
	resp, body := get(t, srv, "/v1/fleet", "Bearer "+token)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/v1/fleet: %s %s", resp.Status, body)
	}
	var f Fleet
	if err := json.Unmarshal([]byte(body), &f); err != nil {
		t.Fatalf("/v1/fleet: %v\n%s", err, body)
	}
	return f
}

// TestFleet: /v1/fleet on any replica asks every one with the token; one
// on a stale rules file and an older CRL is named, as is an endpoint that
// redirects (not followed) and one that refuses the token.
func TestFleet(t *testing.T) {
	const token = "fleet-token"
	redirect := httptest.NewServer(http.RedirectHandler("http://192.0.2.1:9187/v1/status", http.StatusFound))
	t.Cleanup(redirect.Close)
	otherToken := httptest.NewServer(Handler(&gate{token: []byte("another")}, Options{Public: true}))
	t.Cleanup(otherToken.Close)
	srvs, _ := fleetOf(t, token, []string{redirect.URL, otherToken.URL + "/"},
		replicaStatus("gate-1", "f1", "d1", "7"),
		replicaStatus("gate-2", "f1", "d1", "7"),
		replicaStatus("gate-3", "f2", "d0", "6"))
	for _, from := range srvs {
		f := getFleet(t, from, token)
		if f.InSync || len(f.Replicas) != 5 {
			t.Fatalf("in_sync %v, %d replicas; want false, 5: %+v", f.InSync, len(f.Replicas), f)
		}
		byURL := map[string]Replica{}
		for _, r := range f.Replicas {
			byURL[r.URL] = r
		}
		if r := byURL[srvs[2].URL]; !r.Reachable || r.Name != "gate-3" || r.Routes["db"].RulesDigest != "d0" {
			t.Errorf("stale replica: %+v", r)
		}
		if r := byURL[redirect.URL]; r.Reachable || !strings.Contains(r.Error, "302") {
			t.Errorf("redirecting endpoint: %+v; want unreachable with its 302", r)
		}
		if r := byURL[otherToken.URL]; r.Reachable || !strings.Contains(r.Error, "admin token") {
			t.Errorf("endpoint with another token: %+v", r)
		}
		var what []string
		for _, d := range f.Differs {
			what = append(what, d.What)
			switch d.What {
			case DiffRules:
				if d.Route != "db" || !slices.Equal(d.Values["d0"], []string{srvs[2].URL}) || !strings.HasSuffix(d.Text, "d0 on "+srvs[2].URL) {
					t.Errorf("rules difference: %+v", d)
				}
			case DiffCRL:
				if d.Issuer != "CN=space CA" || !slices.Equal(d.Values["6"], []string{srvs[2].URL}) {
					t.Errorf("CRL difference: %+v", d)
				}
			case DiffUnreachable:
				if len(d.Values[""]) != 2 {
					t.Errorf("unreachable: %+v", d)
				}
			}
		}
		if !slices.Equal(what, []string{DiffUnreachable, DiffRules, DiffCRL}) {
			t.Errorf("differs: %q, want unreachable, rules, crl", what)
		}
	}
}

// TestFleetInSync: replicas on the same content are in sync; with no
// admin.fleet, the fleet is the replica asked, alone.
func TestFleetInSync(t *testing.T) {
	srvs, gates := fleetOf(t, "tok", nil, replicaStatus("a", "f1", "d1", "7"), replicaStatus("b", "f1", "d1", "7"))
	if f := getFleet(t, srvs[0], "tok"); !f.InSync || len(f.Replicas) != 2 || len(f.Differs) != 0 {
		t.Errorf("same content: %+v", f)
	}
	gates[1].set(func(g *gate) { g.fleet = nil })
	f := getFleet(t, srvs[1], "tok")
	if !f.InSync || len(f.Replicas) != 1 || f.Replicas[0].Name != "b" || f.Replicas[0].URL != srvs[1].URL {
		t.Errorf("no admin.fleet: %+v", f)
	}
	// Fingerprints that differ with nothing more specific are settings.
	gates[1].set(func(g *gate) { g.status.Fingerprint = "f9" })
	f = getFleet(t, srvs[0], "tok")
	if f.InSync || len(f.Differs) != 1 || f.Differs[0].What != DiffSettings {
		t.Errorf("another fingerprint only: %+v", f.Differs)
	}
}

// TestFleetTimeout: a replica that does not answer is unreachable once
// FleetTimeout has passed, and the others are still reported.
func TestFleetTimeout(t *testing.T) {
	stop := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	t.Cleanup(hang.Close)
	t.Cleanup(func() { close(stop) })
	srvs, _ := fleetOf(t, "tok", []string{hang.URL}, replicaStatus("a", "f1", "d1", "7"))
	start := time.Now()
	f := getFleet(t, srvs[0], "tok")
	took := time.Since(start)
	if took > FleetTimeout+time.Second {
		t.Errorf("took %s, want about %s", took, FleetTimeout)
	}
	if f.InSync || len(f.Replicas) != 2 {
		t.Fatalf("%+v", f)
	}
	for _, r := range f.Replicas {
		if r.URL == hang.URL && (r.Reachable || !strings.Contains(r.Error, "no answer within")) {
			t.Errorf("hanging replica: %+v", r)
		}
		if r.URL == srvs[0].URL && !r.Reachable {
			t.Errorf("answering replica: %+v", r)
		}
	}
}

// TestFleetDNS: a dns: entry makes a replica of each address of the name.
func TestFleetDNS(t *testing.T) {
	srvs, gates := fleetOf(t, "tok", nil, replicaStatus("a", "f1", "d1", "7"))
	_, port, _ := strings.Cut(strings.TrimPrefix(srvs[0].URL, "http://127.0.0.1"), ":")
	gates[0].set(func(g *gate) { g.fleet = []string{"dns:localhost:" + port, "dns:no-such-host.invalid:9187"} })
	f := getFleet(t, srvs[0], "tok")
	var found, failed bool
	for _, r := range f.Replicas {
		found = found || (r.URL == srvs[0].URL && r.Reachable)
		failed = failed || (r.URL == "dns:no-such-host.invalid:9187" && strings.Contains(r.Error, "resolving no-such-host.invalid"))
	}
	if !found || !failed {
		t.Errorf("dns entries: %+v", f.Replicas)
	}
}

// TestStatusWithoutConnections: /v1/status?connections=0, as /v1/fleet
// asks it, leaves the live connections out.
func TestStatusWithoutConnections(t *testing.T) {
	srv := httptest.NewServer(Handler(&gate{status: replicaStatus("a", "f", "d", "1")}, Options{}))
	defer srv.Close()
	for path, want := range map[string]int{"/v1/status": 1, "/v1/status?connections=0": 0} {
		_, body := get(t, srv, path, "")
		var st Status
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatal(err)
		}
		if len(st.Connections) != want {
			t.Errorf("%s: %d connections, want %d", path, len(st.Connections), want)
		}
	}
}
