package proxy

import (
	"sort"
	"sync"

	"github.com/spacegate/spacegate/admin"
)

// registry is the set of live connections: status lists them, and drain
// (and, later, reload) finds the ones to cut. It is safe for concurrent use.
type registry struct {
	mu    sync.Mutex
	conns map[*conn]admin.Conn
}

func (r *registry) init() { r.conns = map[*conn]admin.Conn{} }

func (r *registry) add(c *conn) {
	r.mu.Lock()
	r.conns[c] = admin.Conn{ID: c.id, Route: c.routeName(), Source: c.src.String(), Phase: c.phase.String(), Since: c.start}
	r.mu.Unlock()
}

// update records what the connection's checks found; called once, when the
// connection starts splicing, by the connection's own goroutine.
func (r *registry) update(c *conn) {
	info := admin.Conn{
		ID: c.id, Route: c.route.Name, Source: c.src.String(), Phase: c.phase.String(), Since: c.start,
		IPRule: c.ruleID, CertSubject: c.identity.Subject, CertSerial: c.identity.Serial,
		CertNotAfter: c.identity.NotAfter, User: c.pgUser, Database: c.pgDB,
	}
	r.mu.Lock()
	r.conns[c] = info
	r.mu.Unlock()
}

func (r *registry) remove(c *conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
}

func (r *registry) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

// list returns the live connections, oldest first.
func (r *registry) list() []admin.Conn {
	r.mu.Lock()
	out := make([]admin.Conn, 0, len(r.conns))
	for _, info := range r.conns {
		out = append(out, info)
	}
	r.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Since.Before(out[j].Since) })
	return out
}

// spliced returns the connections admitted by the checks (dialling or
// splicing), which a reload checks again.
func (r *registry) spliced() []*conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*conn
	for c, info := range r.conns {
		if info.Phase == PhaseDial.String() || info.Phase == PhaseSplice.String() {
			out = append(out, c)
		}
	}
	return out
}

// cutAll cuts every live connection for reason and returns how many there
// were. PostgreSQL sessions get their FATAL at a message boundary; the rest
// are closed.
func (r *registry) cutAll(reason *Refusal) int {
	r.mu.Lock()
	conns := make([]*conn, 0, len(r.conns))
	for c := range r.conns {
		conns = append(conns, c)
	}
	r.mu.Unlock()
	for _, c := range conns {
		c.cut(reason)
	}
	return len(conns)
}
