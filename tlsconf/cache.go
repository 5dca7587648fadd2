package tlsconf

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"sync"
	"time"
)

// maxCachedChains bounds a verifyCache. Only chains that verified are
// stored, so filling it takes that many distinct certificates issued by a
// trusted CA; when full it is emptied rather than evicting one by one.
const maxCachedChains = 10000

// verifyCache remembers chains that x509 verification accepted, so that a
// client reconnecting with the same certificate skips the signature checks
// (about 100µs per ECDSA P-256 link, as much as the rest of Verify many times
// over). For fixed roots, the same certificate bytes verify the same way at
// every time within the validity of all certificates involved, which is the
// window stored with each entry. A cache belongs to one Material and so to
// one CA pool: a reload starts a new one.
type verifyCache struct {
	mu      sync.Mutex
	entries map[[sha256.Size]byte]verifiedChains
}

type verifiedChains struct {
	chains              [][]*x509.Certificate
	notBefore, notAfter time.Time // when every certificate of chains is valid
}

func newVerifyCache() *verifyCache {
	return &verifyCache{entries: make(map[[sha256.Size]byte]verifiedChains)}
}

// chainKey hashes the certificates a client presented. Each one is length
// prefixed so that no two different chains give the same input.
func chainKey(chain []*x509.Certificate) [sha256.Size]byte {
	if len(chain) == 1 {
		return sha256.Sum256(chain[0].Raw)
	}
	h := sha256.New()
	var n [4]byte
	for _, c := range chain {
		binary.BigEndian.PutUint32(n[:], uint32(len(c.Raw)))
		h.Write(n[:])
		h.Write(c.Raw)
	}
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// get returns the chains stored for key if at is within their window. A nil
// cache holds nothing.
func (c *verifyCache) get(key [sha256.Size]byte, at time.Time) ([][]*x509.Certificate, bool) {
	if c == nil {
		return nil, false
	}
	c.mu.Lock()
	v, ok := c.entries[key]
	c.mu.Unlock()
	if !ok || at.Before(v.notBefore) || at.After(v.notAfter) {
		return nil, false
	}
	return v.chains, true
}

// put stores chains under key. A nil cache drops them.
func (c *verifyCache) put(key [sha256.Size]byte, chains [][]*x509.Certificate) {
	if c == nil {
		return
	}
	v := verifiedChains{chains: chains}
	for _, ch := range chains {
		for _, cert := range ch {
			if v.notBefore.IsZero() || cert.NotBefore.After(v.notBefore) {
				v.notBefore = cert.NotBefore
			}
			if v.notAfter.IsZero() || cert.NotAfter.Before(v.notAfter) {
				v.notAfter = cert.NotAfter
			}
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= maxCachedChains {
		clear(c.entries)
	}
	c.entries[key] = v
}
