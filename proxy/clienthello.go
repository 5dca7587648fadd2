package proxy

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
)

// A server name with a trailing dot ("db.example.com.", a fully qualified
// name as libpq sends it when host= is typed so) is forbidden in SNI by
// RFC 6066 section 3, and crypto/tls refuses such a ClientHello with a bare
// decode_error alert (handshake_messages.go, clientHelloMsg.unmarshal).
// It cannot be normalised on the way in: the handshake transcript covers
// the ClientHello bytes as the client sent them, so a rewritten hello
// derives other keys (TLS 1.3) or fails the Finished check (TLS 1.2), and
// the client sees "bad record mac". So the first record is read before
// the handshake, and a trailing-dot name is refused with the alert meant
// for it, unrecognized_name, and a log line that says what to change.

const (
	tlsRecordAlert    = 21
	tlsMaxRecordBytes = 16384 + 256 // crypto/tls refuses longer ones itself
	tlsClientHello    = 1
	tlsExtServerName  = 0
)

// alertUnrecognizedName is a fatal unrecognized_name(112) alert record.
var alertUnrecognizedName = []byte{tlsRecordAlert, 3, 3, 0, 2, 2, 112}

// peekClientHello reads the first TLS record of nc, whose first bytes may
// have been read already (prefix), and returns a conn that replays it for
// the handshake. A ClientHello whose server name ends in a dot is refused.
// Anything it cannot parse is left to crypto/tls to judge.
func (c *conn) peekClientHello(prefix []byte) (net.Conn, error) {
	rec := make([]byte, 5, 512)
	copy(rec, prefix)
	if _, err := io.ReadFull(c.nc, rec[len(prefix):]); err != nil {
		return nil, err
	}
	if n := int(binary.BigEndian.Uint16(rec[3:5])); rec[0] == tlsRecordHandshake && n <= tlsMaxRecordBytes {
		rec = slices.Grow(rec, n)[:5+n]
		if _, err := io.ReadFull(c.nc, rec[5:]); err != nil {
			return nil, err
		}
		if name, ok := clientHelloServerName(rec[5:]); ok && strings.HasSuffix(name, ".") {
			return nil, c.trailingDot(name)
		}
	}
	return &prefixConn{Conn: c.nc, prefix: rec}, nil
}

// trailingDot refuses a server name that ends in a dot. The client can be
// told only by an alert: libpq prints "tlsv1 unrecognized name".
func (c *conn) trailingDot(name string) error {
	c.sni = name
	if c.lis.Shared() {
		c.route = c.lis.Route(name) // for the log and metric: the route it meant
	}
	_, _ = c.nc.Write(alertUnrecognizedName)
	return &Refusal{Reason: ReasonUnknownServerName, quiet: true,
		Msg: fmt.Sprintf("TLS server name %q ends in a dot, which TLS does not allow (RFC 6066); the client should connect to host %s", name, strings.TrimRight(name, "."))}
}

// clientHelloServerName returns the host_name of the server_name extension
// of a ClientHello handshake message that fits in b, if it has one.
func clientHelloServerName(b []byte) (string, bool) {
	h := helloReader(b)
	typ, ok := h.u8()
	if !ok || typ != tlsClientHello {
		return "", false
	}
	body, ok := h.vec(3)
	if !ok {
		return "", false
	}
	if !body.skip(2+32) || !body.skipVec(1) || !body.skipVec(2) || !body.skipVec(1) { // version, random, session id, suites, compression
		return "", false
	}
	exts, ok := body.vec(2)
	for ok && len(exts) > 0 {
		var typ int
		var ext helloReader
		if typ, ok = exts.u16(); !ok {
			break
		}
		if ext, ok = exts.vec(2); !ok || typ != tlsExtServerName {
			continue
		}
		list, _ := ext.vec(2)
		for len(list) > 0 {
			kind, _ := list.u8()
			name, ok := list.vec(2)
			if !ok {
				break
			}
			if kind == 0 { // host_name
				return string(name), true
			}
		}
		return "", false
	}
	return "", false
}

// helloReader reads big-endian fields off the front of a byte slice.
type helloReader []byte

func (r *helloReader) u8() (byte, bool) {
	if len(*r) < 1 {
		return 0, false
	}
	v := (*r)[0]
	*r = (*r)[1:]
	return v, true
}

func (r *helloReader) u16() (int, bool) {
	if len(*r) < 2 {
		return 0, false
	}
	v := int(binary.BigEndian.Uint16(*r))
	*r = (*r)[2:]
	return v, true
}

func (r *helloReader) skip(n int) bool {
	if len(*r) < n {
		return false
	}
	*r = (*r)[n:]
	return true
}

// vec reads a vector with a lenBytes-byte length prefix.
func (r *helloReader) vec(lenBytes int) (helloReader, bool) {
	if len(*r) < lenBytes {
		return nil, false
	}
	n := 0
	for _, b := range (*r)[:lenBytes] {
		n = n<<8 | int(b)
	}
	*r = (*r)[lenBytes:]
	if len(*r) < n {
		return nil, false
	}
	v := (*r)[:n]
	*r = (*r)[n:]
	return v, true
}

func (r *helloReader) skipVec(lenBytes int) bool {
	_, ok := r.vec(lenBytes)
	return ok
}
