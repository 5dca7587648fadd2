package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// MaxFleet is the most admin.fleet entries a config may list, and the
// most replicas /v1/fleet asks: a fleet larger than that is not one
// balancer's, and each /v1/fleet call costs a request per replica.
const MaxFleet = 64

// A FleetEntry is one entry of admin.fleet: the admin endpoint of a
// replica (URL), or a DNS name whose every A and AAAA record is one
// (DNSName and Port), as a Kubernetes headless Service answers.
type FleetEntry struct {
	URL     string // "http://10.0.0.11:9187", without a trailing slash; "" for a DNS entry
	DNSName string // "spacegate-admin.edge.svc.cluster.local"
	Port    string // "9187"
}

// dnsName is a host name as DNS has it: labels of letters, digits, hyphens
// and underscores (SRV-style), dot-separated, an optional final dot.
var dnsName = regexp.MustCompile(`^([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?$`)

// ParseFleetEntry parses one entry of admin.fleet: http(s)://HOST:PORT,
// with nothing after the port but an optional "/", or dns:NAME:PORT.
func ParseFleetEntry(s string) (FleetEntry, error) {
	if rest, ok := strings.CutPrefix(s, "dns:"); ok {
		name, port, ok := strings.Cut(rest, ":")
		if !ok || name == "" {
			return FleetEntry{}, fmt.Errorf("%q: want dns:NAME:PORT, such as dns:spacegate-admin.edge.svc.cluster.local:9187", s)
		}
		if !dnsName.MatchString(name) || len(name) > 253 {
			return FleetEntry{}, fmt.Errorf("%q: %q is not a DNS name", s, name)
		}
		if err := checkPort(port); err != nil {
			return FleetEntry{}, fmt.Errorf("%q: %w", s, err)
		}
		return FleetEntry{DNSName: name, Port: port}, nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return FleetEntry{}, fmt.Errorf("%q is neither a URL nor dns:NAME:PORT: %w", s, errors.Unwrap(err))
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return FleetEntry{}, fmt.Errorf("%q: want http://HOST:PORT, https://HOST:PORT or dns:NAME:PORT", s)
	case u.User != nil:
		return FleetEntry{}, fmt.Errorf("%q: no user or password in the URL: the admin token of admin.token_file is sent", s)
	case u.Host == "" || u.Port() == "":
		return FleetEntry{}, fmt.Errorf("%q: want the host and port of the replica's admin.listen, such as http://10.0.0.11:9187", s)
	case (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		return FleetEntry{}, fmt.Errorf("%q: nothing may follow the port: /v1/status is asked of it", s)
	}
	if err := checkPort(u.Port()); err != nil {
		return FleetEntry{}, fmt.Errorf("%q: %w", s, err)
	}
	return FleetEntry{URL: u.Scheme + "://" + u.Host}, nil
}

func checkPort(port string) error {
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	return nil
}

// String returns the entry as written in admin.fleet.
func (e FleetEntry) String() string {
	if e.URL != "" {
		return e.URL
	}
	return "dns:" + e.DNSName + ":" + e.Port
}

// ReplicaURL returns the admin URL of the replica at addr, a record of a
// DNS entry.
func (e FleetEntry) ReplicaURL(addr string) string {
	return "http://" + net.JoinHostPort(addr, e.Port)
}

// validateFleet checks admin.fleet: each entry parses, none twice, at most
// MaxFleet, and an admin endpoint to serve /v1/fleet from.
func (a *Admin) validateFleet(v *validator) {
	if len(a.Fleet) == 0 {
		return
	}
	if a.Listen == "" {
		v.addf([]any{"admin", "fleet"}, "admin.fleet is served at /v1/fleet of the admin endpoint: set admin.listen")
	}
	if len(a.Fleet) > MaxFleet {
		v.addf([]any{"admin", "fleet"}, "admin.fleet lists %d entries, more than %d", len(a.Fleet), MaxFleet)
	}
	seen := map[string]int{}
	for i, s := range a.Fleet {
		e, err := ParseFleetEntry(s)
		if err != nil {
			v.addf([]any{"admin", "fleet", i}, "admin.fleet: %v", err)
			continue
		}
		if j, dup := seen[e.String()]; dup {
			v.addf([]any{"admin", "fleet", i}, "admin.fleet: %s is listed twice (entry %d and %d)", s, j+1, i+1)
			continue
		}
		seen[e.String()] = i
	}
}
