package admin

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spacegate/spacegate/config"
)

// Fleet is the document served at /v1/fleet: every replica of
// admin.fleet as it answered /v1/status, whether they serve the same
// content, and what differs.
type Fleet struct {
	Replicas []Replica `json:"replicas"`
	// InSync is true when every replica answered and all serve the same
	// fingerprint.
	InSync bool `json:"in_sync"`
	// Differs says what is not the same, one entry per thing; empty when
	// InSync.
	Differs []Difference `json:"differs"`
}

// Replica is one replica in /v1/fleet. When it could not be asked,
// Reachable is false, Error says why and the rest is empty.
type Replica struct {
	URL         string                  `json:"url"`
	Reachable   bool                    `json:"reachable"`
	Error       string                  `json:"error,omitempty"`
	Name        string                  `json:"name,omitempty"`
	Fingerprint string                  `json:"fingerprint,omitempty"`
	Generation  uint64                  `json:"generation,omitempty"`
	LoadedAt    time.Time               `json:"loaded_at,omitzero"`
	Ready       bool                    `json:"ready"`
	Routes      map[string]ReplicaRoute `json:"routes,omitempty"`
}

// ReplicaRoute is what a replica enforces on one route.
type ReplicaRoute struct {
	RulesDigest      string   `json:"rules_digest"`
	RuleIDs          []string `json:"rule_ids"`
	ServerCertSerial string   `json:"server_cert_serial,omitempty"`
	CAFingerprints   []string `json:"ca_fingerprints"`
	CRLs             []CRL    `json:"crls"`
}

// Kinds of Difference.
const (
	DiffUnreachable = "unreachable" // replicas that did not answer
	DiffRoutes      = "routes"      // a route some replicas have and others not
	DiffRules       = "rules"       // a route's rules digest
	DiffServerCert  = "server_cert" // a route's server certificate serial
	DiffCABundle    = "ca_bundle"   // a route's CA bundle
	DiffCRL         = "crl"         // the number of a route's CRL of one issuer
	DiffSettings    = "settings"    // fingerprints differ and nothing above says why
)

// Difference is one thing the replicas do not agree on. Values maps each
// value seen to the URLs of the replicas that have it ("" for none).
type Difference struct {
	What   string              `json:"what"`
	Route  string              `json:"route,omitempty"`
	Issuer string              `json:"issuer,omitempty"`
	Values map[string][]string `json:"values,omitempty"`
	// Text says the same for people: "route db: rules 1a2b… on
	// http://10.0.0.11:9187, http://10.0.0.12:9187; 3c4d… on
	// http://10.0.0.13:9187".
	Text string `json:"text"`
}

// Bounds of a /v1/fleet call.
const (
	// FleetTimeout bounds the whole call, name lookups included: a
	// replica that has not answered by then is unreachable.
	FleetTimeout = 2 * time.Second
	// maxStatusBody bounds one replica's /v1/status (asked without its
	// connections): room for routes of 200,000 rule ids.
	maxStatusBody = 32 << 20
)

// fleetClient asks the replicas: no redirects followed (an endpoint that
// sends one elsewhere is not a replica), no proxy from the environment,
// and no connection kept between calls (they are seconds apart at most
// once per CLI poll, and an idle pool would outlive a reload that changed
// the fleet).
func fleetClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true, MaxResponseHeaderBytes: 64 << 10},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// NewReplica summarises st, the status of the replica at url, as a
// reachable Replica.
func NewReplica(url string, st Status) Replica {
	r := Replica{URL: url, Reachable: true, Name: st.Name, Fingerprint: st.Fingerprint,
		Generation: st.Generation, LoadedAt: st.LoadedAt, Ready: st.Ready, Routes: map[string]ReplicaRoute{}}
	for _, rs := range st.Routes {
		r.Routes[rs.Name] = ReplicaRoute{RulesDigest: rs.RulesDigest, RuleIDs: nonNil(rs.RuleIDs),
			ServerCertSerial: rs.ServerCertSerial, CAFingerprints: nonNil(rs.CAFingerprints), CRLs: nonNil(rs.CRLs)}
	}
	return r
}

// nonNil returns s, or an empty slice for nil, so that JSON has [] rather
// than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// fleetAsker asks the replicas of a fleet.
type fleetAsker struct {
	client   *http.Client
	resolver *net.Resolver
}

// ask returns the fleet of entries: every replica's /v1/status, asked in
// parallel with token, within ctx. self stands for the fleet when entries
// is empty.
func (f *fleetAsker) ask(ctx context.Context, entries []string, token []byte, self func() Replica) Fleet {
	if len(entries) == 0 {
		return Compare([]Replica{self()})
	}
	urls, failed := f.resolve(ctx, entries)
	replicas := make([]Replica, len(urls))
	var wg sync.WaitGroup
	for i, u := range urls {
		wg.Go(func() { replicas[i] = f.askOne(ctx, u, token) })
	}
	wg.Wait()
	return Compare(append(replicas, failed...))
}

// resolve turns entries into replica URLs, each once and at most
// config.MaxFleet. A DNS name that cannot be resolved is returned as an
// unreachable Replica named by its entry.
func (f *fleetAsker) resolve(ctx context.Context, entries []string) (urls []string, failed []Replica) {
	add := func(u string) {
		if !slices.Contains(urls, u) && len(urls) < config.MaxFleet {
			urls = append(urls, u)
		}
	}
	for _, s := range entries {
		e, err := config.ParseFleetEntry(s)
		if err != nil { // validated at load; kept for a Gate that did not
			failed = append(failed, Replica{URL: s, Error: err.Error()})
			continue
		}
		if e.URL != "" {
			add(e.URL)
			continue
		}
		addrs, err := f.resolver.LookupNetIP(ctx, "ip", e.DNSName)
		if err == nil && len(addrs) == 0 {
			err = errors.New("no A or AAAA record")
		}
		if err != nil {
			failed = append(failed, Replica{URL: e.String(), Error: "resolving " + e.DNSName + ": " + err.Error()})
			continue
		}
		slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
		for _, a := range addrs {
			add(e.ReplicaURL(a.Unmap().String()))
		}
	}
	return urls, failed
}

// askOne asks the replica at base for its /v1/status, without the
// connections.
func (f *fleetAsker) askOne(ctx context.Context, base string, token []byte) Replica {
	fail := func(format string, args ...any) Replica {
		return Replica{URL: base, Error: fmt.Sprintf(format, args...)}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/status?connections=0", nil)
	if err != nil {
		return fail("%v", err)
	}
	if token != nil {
		req.Header.Set("Authorization", "Bearer "+string(token))
	}
	resp, err := f.client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fail("no answer within %s", FleetTimeout)
		}
		return fail("%v", unwrapURLError(err))
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		return fail("%s: the replica refused this replica's admin token: is admin.token_file the same file on both?", resp.Status)
	case resp.StatusCode != http.StatusOK:
		return fail("%s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxStatusBody+1))
	if err != nil {
		return fail("reading /v1/status: %v", err)
	}
	if len(body) > maxStatusBody {
		return fail("/v1/status is larger than %d MiB", maxStatusBody>>20)
	}
	var st Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fail("/v1/status is not a spacegate status: %v", err)
	}
	if st.Fingerprint == "" {
		return fail("/v1/status has no fingerprint: a spacegate older than /v1/fleet, or not a spacegate")
	}
	return NewReplica(base, st)
}

// unwrapURLError drops the "Get \"URL\": " that net/http puts before the
// cause: the URL is the replica's, said already.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// Compare returns the fleet of replicas: InSync when all are reachable
// and share one fingerprint, and what differs. Replicas are sorted by URL.
func Compare(replicas []Replica) Fleet {
	slices.SortFunc(replicas, func(a, b Replica) int { return strings.Compare(a.URL, b.URL) })
	f := Fleet{Replicas: replicas, Differs: []Difference{}}
	var up []Replica
	var down []string
	for _, r := range replicas {
		if r.Reachable {
			up = append(up, r)
		} else {
			down = append(down, r.URL)
		}
	}
	if len(down) > 0 {
		f.Differs = append(f.Differs, Difference{What: DiffUnreachable, Values: map[string][]string{"": down},
			Text: "not reachable: " + strings.Join(down, ", ")})
	}
	fingerprints := group(up, func(r Replica) string { return r.Fingerprint })
	f.InSync = len(down) == 0 && len(fingerprints) == 1
	if len(fingerprints) <= 1 {
		return f
	}
	before := len(f.Differs)
	var routes []string
	for _, r := range up {
		for name := range r.Routes {
			if !slices.Contains(routes, name) {
				routes = append(routes, name)
			}
		}
	}
	slices.Sort(routes)
	for _, route := range routes {
		has := group(up, func(r Replica) string {
			if _, ok := r.Routes[route]; ok {
				return "present"
			}
			return "absent"
		})
		if len(has) > 1 {
			f.Differs = append(f.Differs, Difference{What: DiffRoutes, Route: route, Values: has,
				Text: fmt.Sprintf("route %s: served by %s; not by %s", route, strings.Join(has["present"], ", "), strings.Join(has["absent"], ", "))})
			continue
		}
		f.Differs = appendDiff(f.Differs, DiffRules, route, "", "rules", up, func(r Replica) string { return r.Routes[route].RulesDigest })
		f.Differs = appendDiff(f.Differs, DiffServerCert, route, "", "server certificate", up, func(r Replica) string { return r.Routes[route].ServerCertSerial })
		f.Differs = appendDiff(f.Differs, DiffCABundle, route, "", "CA bundle", up, func(r Replica) string {
			return shortList(r.Routes[route].CAFingerprints)
		})
		var issuers []string
		for _, r := range up {
			for _, c := range r.Routes[route].CRLs {
				if !slices.Contains(issuers, c.Issuer) {
					issuers = append(issuers, c.Issuer)
				}
			}
		}
		slices.Sort(issuers)
		for _, issuer := range issuers {
			f.Differs = appendDiff(f.Differs, DiffCRL, route, issuer, "CRL of "+issuer+", number", up, func(r Replica) string {
				for _, c := range r.Routes[route].CRLs {
					if c.Issuer == issuer {
						return c.Number
					}
				}
				return ""
			})
		}
	}
	if len(f.Differs) == before {
		f.Differs = append(f.Differs, Difference{What: DiffSettings, Values: fingerprints,
			Text: "settings: fingerprint " + describe(fingerprints)})
	}
	return f
}

// appendDiff appends a Difference of what on route when value is not the
// same on every replica.
func appendDiff(ds []Difference, what, route, issuer, label string, up []Replica, value func(Replica) string) []Difference {
	g := group(up, value)
	if len(g) <= 1 {
		return ds
	}
	return append(ds, Difference{What: what, Route: route, Issuer: issuer, Values: g,
		Text: fmt.Sprintf("route %s: %s %s", route, label, describe(g))})
}

// group maps each value of rs to the URLs that have it.
func group(rs []Replica, value func(Replica) string) map[string][]string {
	out := map[string][]string{}
	for _, r := range rs {
		v := value(r)
		out[v] = append(out[v], r.URL)
	}
	return out
}

// describe writes a grouping as "A on u1, u2; B on u3", the largest
// group first, so that the odd one out comes last.
func describe(g map[string][]string) string {
	keys := slices.Collect(maps.Keys(g))
	slices.SortFunc(keys, func(a, b string) int {
		return cmp.Or(len(g[b])-len(g[a]), strings.Compare(a, b))
	})
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s on %s", cmp.Or(k, "none"), strings.Join(g[k], ", ")))
	}
	return strings.Join(parts, "; ")
}

// shortList writes hex fingerprints as their first 16 digits, joined.
func shortList(fps []string) string {
	short := make([]string, len(fps))
	for i, fp := range fps {
		short[i] = fp[:min(len(fp), 16)]
	}
	return strings.Join(short, "+")
}
