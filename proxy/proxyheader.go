package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/netip"

	"github.com/pires/go-proxyproto"
)

// PROXY protocol (haproxy.org/download/3.0/doc/proxy-protocol.txt) tells
// the gate the client's address when it sits behind an L4 load balancer.
// A header is believed only from proxy_protocol.trusted_cidrs: from anyone
// else it would let a client pick the source address the IP rules check.
//
// The header is read here byte-exactly, and go-proxyproto parses it. Its
// own Conn wrapper would read ahead through a bufio.Reader, which hides
// bytes from the check for plaintext stuffed after an SSLRequest and costs
// a copy on every read of the session.
const (
	proxyV1MaxLen = 107  // the spec's bound for a v1 line, CRLF included
	proxyV2MaxLen = 4096 // bound on v2 address and TLV bytes we accept
)

var (
	proxyV1Sig = []byte("PROXY ")
	proxyV2Sig = proxyproto.SIGV2
)

// mayStartProxyHeader reports whether b can be the first byte of a PROXY
// header. Neither byte can start a PostgreSQL start-up packet (its length
// would exceed 1 GB) or a TLS record, so the check costs no ambiguity.
func mayStartProxyHeader(b byte) bool { return b == proxyV1Sig[0] || b == proxyV2Sig[0] }

// readProxyHeader reads the PROXY header whose first byte has been read,
// and returns the client address it carries. ok is false when the header
// carries none to use (v2 LOCAL, as in a balancer's health check, or v1
// UNKNOWN): the peer address stands then.
func readProxyHeader(r io.Reader, first byte) (src netip.AddrPort, ok bool, err error) {
	var hdr []byte
	switch first {
	case proxyV1Sig[0]:
		hdr, err = readProxyV1(r, first)
	case proxyV2Sig[0]:
		hdr, err = readProxyV2(r, first)
	default:
		return src, false, errNotProxyHeader
	}
	if err != nil {
		return src, false, err
	}
	h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(hdr)))
	if err != nil {
		return src, false, refuse(ReasonProtocolViolation, "malformed PROXY protocol header", err)
	}
	if first == proxyV2Sig[0] {
		if err := checkV2TLVs(hdr); err != nil {
			return src, false, err
		}
	}
	if !h.Command.IsProxy() {
		return src, false, nil
	}
	tcp, _, isTCP := h.TCPAddrs()
	if !isTCP {
		return src, false, nil
	}
	ap := tcp.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true, nil
}

// errNotProxyHeader says that bytes which could have started a PROXY
// header do not. It is a plain sentinel, never a *Refusal: refusals are
// per connection and may be changed by the code that handles them.
var errNotProxyHeader = errors.New("not a PROXY protocol header")

// readProxyV1 reads a v1 line up to and including its CRLF, never more.
func readProxyV1(r io.Reader, first byte) ([]byte, error) {
	line := make([]byte, 1, proxyV1MaxLen)
	line[0] = first
	var b [1]byte
	for len(line) < proxyV1MaxLen {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return nil, err
		}
		line = append(line, b[0])
		if len(line) <= len(proxyV1Sig) && line[len(line)-1] != proxyV1Sig[len(line)-1] {
			return nil, errNotProxyHeader
		}
		if b[0] == '\n' {
			return line, nil
		}
	}
	return nil, refuse(ReasonProtocolViolation, fmt.Sprintf("PROXY protocol v1 header longer than %d bytes", proxyV1MaxLen), nil)
}

// readProxyV2 reads the 16-byte v2 header and the address block it announces.
func readProxyV2(r io.Reader, first byte) ([]byte, error) {
	hdr := make([]byte, 16)
	hdr[0] = first
	// The signature a byte at a time, as for v1: a client that sent a
	// line of plaintext and waits for the answer must not be kept
	// waiting for bytes it will never send.
	for i := 1; i < len(proxyV2Sig); i++ {
		if _, err := io.ReadFull(r, hdr[i:i+1]); err != nil {
			return nil, err
		}
		if hdr[i] != proxyV2Sig[i] {
			return nil, errNotProxyHeader
		}
	}
	if _, err := io.ReadFull(r, hdr[len(proxyV2Sig):]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[14:16]))
	if n > proxyV2MaxLen {
		return nil, refuse(ReasonProtocolViolation, fmt.Sprintf("PROXY protocol v2 header announces %d bytes, more than %d", n, proxyV2MaxLen), nil)
	}
	hdr = append(hdr, make([]byte, n)...)
	if _, err := io.ReadFull(r, hdr[16:]); err != nil {
		return nil, err
	}
	return hdr, nil
}

// v2AddrLen is the size of a v2 address block by address family (the high
// nibble of byte 13): UNSPEC, INET, INET6, UNIX.
var v2AddrLen = [...]int{0, 12, 36, 216}

// crc32c is the Castagnoli table of PP2_TYPE_CRC32C.
var crc32c = crc32.MakeTable(crc32.Castagnoli)

// checkV2TLVs checks the TLVs after a v2 header's address block: each must
// end inside the length the header announces, and a PP2_TYPE_CRC32C must
// hold the CRC32C of the whole header with its own value zeroed (section
// 2.2.4). go-proxyproto splits TLVs but checks no checksum, and its split
// drops the bytes of NOOP padding, so the offsets the checksum needs are
// only found by walking the header here.
func checkV2TLVs(hdr []byte) error {
	family := int(hdr[13] >> 4)
	if family >= len(v2AddrLen) || len(hdr) < 16+v2AddrLen[family] {
		// A LOCAL header whose block does not fit its family is skipped
		// whole, as the spec asks; go-proxyproto refuses any other.
		return nil
	}
	var sum []byte // the CRC32C value, inside hdr
	for i := 16 + v2AddrLen[family]; i < len(hdr); {
		if len(hdr)-i < 3 {
			return refuse(ReasonProtocolViolation, fmt.Sprintf("PROXY protocol v2 header ends inside a TLV's type and length, %d bytes from its end", len(hdr)-i), nil)
		}
		typ, n := proxyproto.PP2Type(hdr[i]), int(binary.BigEndian.Uint16(hdr[i+1:i+3]))
		i += 3
		if n > len(hdr)-i {
			return refuse(ReasonProtocolViolation, fmt.Sprintf("PROXY protocol v2 TLV of type 0x%02x announces %d bytes, past the end of the header (%d left)", byte(typ), n, len(hdr)-i), nil)
		}
		if typ == proxyproto.PP2_TYPE_CRC32C {
			if sum != nil {
				return refuse(ReasonProtocolViolation, "PROXY protocol v2 header carries more than one CRC32C TLV", nil)
			}
			if n != 4 {
				return refuse(ReasonProtocolViolation, fmt.Sprintf("PROXY protocol v2 CRC32C TLV holds %d bytes, not 4", n), nil)
			}
			sum = hdr[i : i+4]
		}
		i += n
	}
	if sum == nil {
		return nil
	}
	want := binary.BigEndian.Uint32(sum)
	var saved [4]byte
	copy(saved[:], sum)
	clear(sum)
	got := crc32.Checksum(hdr, crc32c)
	copy(sum, saved[:])
	if got != want {
		return refuse(ReasonProtocolViolation, fmt.Sprintf("PROXY protocol v2 header fails its CRC32C checksum (carries %08x, computed %08x)", want, got), nil)
	}
	return nil
}

// trustedProxy reports whether peer may send a PROXY header.
func (s *Snapshot) trustedProxy(peer netip.Addr) bool {
	for _, p := range s.trustedProxies {
		if p.Contains(peer) {
			return true
		}
	}
	return false
}
