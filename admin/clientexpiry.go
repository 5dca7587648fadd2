package admin

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// clientExpiryTTL is how long an identity stays in the client expiry metric
// after its last connection. Without a bound, the identity of a replaced
// certificate would keep an expiry alert firing forever.
const clientExpiryTTL = 24 * time.Hour

// clientExpiryCollector exports, per route and identity, the nearest client
// certificate expiry seen, for identities seen within ttl. Safe for
// concurrent use.
type clientExpiryCollector struct {
	desc *prometheus.Desc
	ttl  time.Duration
	now  func() time.Time

	mu   sync.Mutex
	seen map[[2]string]clientSeen
}

type clientSeen struct {
	notAfter time.Time // the nearest expiry seen for the identity
	lastSeen time.Time
}

func (c *clientExpiryCollector) observe(route, identity string, notAfter time.Time) {
	k := [2]string{route, identity}
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.seen[k]
	if !ok || notAfter.Before(v.notAfter) {
		v.notAfter = notAfter
	}
	v.lastSeen = c.now()
	c.seen[k] = v
}

func (c *clientExpiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *clientExpiryCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, v := range c.seen {
		if now.Sub(v.lastSeen) > c.ttl {
			delete(c.seen, k)
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(v.notAfter.Unix()), k[0], k[1])
	}
}

// list returns the identities seen within ttl with their nearest expiry.
func (c *clientExpiryCollector) list() []CertExpiry {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []CertExpiry
	for k, v := range c.seen {
		if now.Sub(v.lastSeen) <= c.ttl {
			out = append(out, CertExpiry{Kind: CertClient, Route: k[0], Subject: k[1], NotAfter: v.notAfter})
		}
	}
	return out
}
