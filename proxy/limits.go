package proxy

import (
	"fmt"
	"net/netip"
	"sync"
)

// limiter counts admitted connections against max_connections, each
// route's max_connections and max_connections_per_source. One mutex guards
// all three so that a connection takes its slots together or not at all;
// it is taken twice per connection, far off the splice's hot path.
type limiter struct {
	mu       sync.Mutex
	total    int
	perRoute map[string]int
	perSrc   map[netip.Addr]int
}

// acquire takes a slot for a connection of route from src, or returns the
// refusal that names the limit reached.
func (l *limiter) acquire(lim LimitsConfig, route *Route, src netip.Addr) *Refusal {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perRoute == nil {
		l.perRoute, l.perSrc = map[string]int{}, map[netip.Addr]int{}
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
	}
	l.total++
	l.perRoute[route.Name]++
	l.perSrc[src]++
	return nil
}

func (l *limiter) release(route string, src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.perRoute[route]--; l.perRoute[route] <= 0 {
		delete(l.perRoute, route)
	}
	if l.perSrc[src]--; l.perSrc[src] <= 0 {
		delete(l.perSrc, src)
	}
}
