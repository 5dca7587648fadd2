package proxy

import (
	"fmt"
	"net/netip"
	"sync"

	"github.com/spacegate/spacegate/config"
)

// limiter counts admitted connections against max_connections, each
// route's max_connections, max_connections_per_source and
// max_connections_per_certificate. One mutex guards them all so that a connection takes its slots together or not at all;
// it is taken twice per connection, far off the splice's hot path.
type limiter struct {
	mu       sync.Mutex
	total    int
	perRoute map[string]int
	perSrc   map[netip.Addr]int
	perCert  map[string]int // by certificate serial
}

// acquire takes a slot for a connection of route from src, or returns the
// refusal that names the limit reached. cert is the client certificate's
// serial.
func (l *limiter) acquire(lim config.Limits, route *Route, src netip.Addr, cert string) *Refusal {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perRoute == nil {
		l.perRoute, l.perSrc, l.perCert = map[string]int{}, map[netip.Addr]int{}, map[string]int{}
	}
	switch {
	case l.total >= lim.MaxConnections:
		return &Refusal{Reason: ReasonTooManyConnections,
			Msg: fmt.Sprintf("too many connections through this gate (limit %d)", lim.MaxConnections), Hint: "try again later"}
	case route.MaxConnections > 0 && l.perRoute[route.Name] >= route.MaxConnections:
		return &Refusal{Reason: ReasonRouteConnectionLimit,
			Msg: fmt.Sprintf("too many connections for route %s (limit %d)", route.Name, route.MaxConnections), Hint: "try again later"}
	case lim.MaxConnectionsPerSource > 0 && l.perSrc[src] >= lim.MaxConnectionsPerSource:
		return &Refusal{Reason: ReasonSourceConnectionLimit,
			Msg:  fmt.Sprintf("too many connections from %s (limit %d per source address)", src, lim.MaxConnectionsPerSource),
			Hint: "close idle connections, or use a connection pool"}
	case lim.MaxConnectionsPerCertificate > 0 && l.perCert[cert] >= lim.MaxConnectionsPerCertificate:
		return &Refusal{Reason: ReasonCertConnectionLimit,
			Msg:  fmt.Sprintf("too many connections with client certificate %s (limit %d per certificate)", cert, lim.MaxConnectionsPerCertificate),
			Hint: "close idle connections, or use a connection pool"}
	}
	l.total++
	l.perRoute[route.Name]++
	l.perSrc[src]++
	l.perCert[cert]++
	return nil
}

func (l *limiter) release(route string, src netip.Addr, cert string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.perRoute[route]--; l.perRoute[route] <= 0 {
		delete(l.perRoute, route)
	}
	if l.perSrc[src]--; l.perSrc[src] <= 0 {
		delete(l.perSrc, src)
	}
	if l.perCert[cert]--; l.perCert[cert] <= 0 {
		delete(l.perCert, cert)
	}
}
