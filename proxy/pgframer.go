package proxy

import (
	"encoding/binary"

	"github.com/spacegate/spacegate/internal/splice"
)

// pgFramer follows the message framing of a PostgreSQL server's stream (a
// type byte and a 4-byte length that counts itself), so that a cut can put
// its FATAL between two messages, never inside one. It costs a few
// comparisons per message. A length below 4, which no server sends, counts
// as a message with no body rather than stalling the count.
type pgFramer struct {
	hdr       [5]byte
	hdrN      int   // header bytes of the current message seen so far
	remaining int64 // body bytes of the current message still to come
	last      byte  // the type of the latest message whose header has come
}

var _ splice.Framer = (*pgFramer)(nil)

func (f *pgFramer) atBoundary() bool { return f.hdrN == 0 && f.remaining == 0 }

// Advance consumes b.
func (f *pgFramer) Advance(b []byte) {
	for len(b) > 0 {
		if f.remaining > 0 {
			n := int(min(f.remaining, int64(len(b))))
			f.remaining -= int64(n)
			b = b[n:]
			continue
		}
		n := copy(f.hdr[f.hdrN:], b)
		f.hdrN += n
		b = b[n:]
		if f.hdrN == len(f.hdr) {
			f.hdrN = 0
			f.last = f.hdr[0]
			f.remaining = max(int64(binary.BigEndian.Uint32(f.hdr[1:]))-4, 0)
		}
	}
}

// Boundary returns how many bytes of b complete the current message, and
// whether b reaches its end; 0, true when already at a boundary.
func (f *pgFramer) Boundary(b []byte) (int, bool) {
	if f.atBoundary() {
		return 0, true
	}
	g := *f
	for i := 0; i < len(b); {
		if g.remaining > 0 {
			n := int(min(g.remaining, int64(len(b)-i)))
			g.remaining -= int64(n)
			i += n
		} else {
			g.hdr[g.hdrN] = b[i]
			g.hdrN++
			i++
			if g.hdrN == len(g.hdr) {
				g.hdrN = 0
				g.remaining = max(int64(binary.BigEndian.Uint32(g.hdr[1:]))-4, 0)
			}
		}
		if g.atBoundary() {
			return i, true
		}
	}
	return 0, false
}
