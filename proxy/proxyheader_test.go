package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pires/go-proxyproto"
)

// v2WithTLVs formats a v2 PROXY header from src carrying tlvs, and lets
// edit change its bytes before the CRC32C TLV, if any, is filled in.
func v2WithTLVs(t testing.TB, src string, tlvs []proxyproto.TLV, edit func([]byte)) []byte {
	t.Helper()
	h := proxyHeader(2, src)
	if err := h.SetTLVs(tlvs); err != nil {
		t.Fatal(err)
	}
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	for i := 16 + 12; i+3 <= len(b); {
		n := int(binary.BigEndian.Uint16(b[i+1:]))
		if proxyproto.PP2Type(b[i]) == proxyproto.PP2_TYPE_CRC32C && n == 4 {
			binary.BigEndian.PutUint32(b[i+3:], crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
		}
		i += 3 + n
	}
	if edit != nil {
		edit(b)
	}
	return b
}

// TestCRC32CKnownAnswer pins the table to the standard check value of
// CRC-32C (RFC 3720 B.4's polynomial): "123456789" sums to e3069283.
func TestCRC32CKnownAnswer(t *testing.T) {
	if got := crc32.Checksum([]byte("123456789"), crc32c); got != 0xe3069283 {
		t.Fatalf("CRC32C(123456789) = %08x, want e3069283", got)
	}
}

// TestProxyV2TLVs: TLVs must end inside the header and a CRC32C, when
// present, must match; otherwise the header is refused with a sentence
// naming the fault.
func TestProxyV2TLVs(t *testing.T) {
	crc := proxyproto.TLV{Type: proxyproto.PP2_TYPE_CRC32C, Value: make([]byte, 4)}
	authority := proxyproto.TLV{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: []byte("db.example.com")}
	noop := proxyproto.TLV{Type: proxyproto.PP2_TYPE_NOOP, Value: []byte{0, 0, 0}}
	const tlvs = 16 + 12 // where the first TLV starts after an IPv4 block
	for _, tc := range []struct {
		name string
		hdr  []byte
		want string // "" accepted
	}{
		{"no TLVs", v2WithTLVs(t, "203.0.113.7", nil, nil), ""},
		{"authority", v2WithTLVs(t, "203.0.113.7", []proxyproto.TLV{authority}, nil), ""},
		{"good CRC32C among others", v2WithTLVs(t, "203.0.113.7", []proxyproto.TLV{authority, crc, noop}, nil), ""},
		{"bad CRC32C", v2WithTLVs(t, "203.0.113.7", []proxyproto.TLV{authority, crc}, func(b []byte) { b[len(b)-1] ^= 1 }),
			"PROXY protocol v2 header fails its CRC32C checksum"},
		{"source changed after the CRC32C", v2WithTLVs(t, "203.0.113.7", []proxyproto.TLV{crc}, func(b []byte) { b[16+3] = 8 }),
			"fails its CRC32C checksum"},
		{"CRC32C of 3 bytes", v2WithTLVs(t, "203.0.113.7", []proxyproto.TLV{{Type: proxyproto.PP2_TYPE_CRC32C, Value: []byte{1, 2, 3}}}, nil),
			"CRC32C TLV holds 3 bytes, not 4"},
		{"two CRC32C", v2WithTLVs(t, "203.0.113.7", []proxyproto.TLV{crc, crc}, nil), "more than one CRC32C"},
		{"TLV length past the header", v2WithTLVs(t, "203.0.113.7", []proxyproto.TLV{authority}, func(b []byte) { b[tlvs+2] += 1 }),
			"PROXY protocol v2 TLV of type 0x02 announces 15 bytes, past the end of the header (14 left)"},
		{"TLV cut inside its length", v2WithTLVs(t, "203.0.113.7", []proxyproto.TLV{authority}, func(b []byte) {
			binary.BigEndian.PutUint16(b[14:], uint16(len(b)-16+2)) // room for 2 more bytes, sent as 0xe0 0x00
		}), "ends inside a TLV's type and length"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := tc.hdr
			if n := 16 + int(binary.BigEndian.Uint16(hdr[14:])); n > len(hdr) {
				hdr = append(hdr, make([]byte, n-len(hdr))...)
				hdr[len(hdr)-2] = 0xe0
			}
			r := bytes.NewReader(append(hdr, 'S'))
			_, _ = r.ReadByte()
			src, ok, err := readProxyHeader(r, hdr[0])
			if tc.want == "" {
				if err != nil || !ok || src.Addr().String() != "203.0.113.7" {
					t.Fatalf("got %v, %v, %v; want 203.0.113.7", src, ok, err)
				}
				return
			}
			var ref *Refusal
			if !errors.As(err, &ref) || ref.Reason != ReasonProtocolViolation || !strings.Contains(ref.Msg, tc.want) {
				t.Fatalf("got %v, want protocol_violation %q", err, tc.want)
			}
			if r.Len() != 1 {
				t.Errorf("%d bytes past the header were read", 1-r.Len())
			}
		})
	}
}

// TestProxyV2TLVsThroughGate: a trusted balancer's header whose CRC32C does
// not match is refused with FATAL 08P01 naming the checksum, and counted as
// protocol_violation; the same header with a good checksum is let through.
func TestProxyV2TLVsThroughGate(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true, top: "proxy_protocol:\n  trusted_cidrs: [127.0.0.1/32]\n",
		rules: []string{"203.0.113.7/32"}})
	crc := []proxyproto.TLV{{Type: proxyproto.PP2_TYPE_CRC32C, Value: make([]byte, 4)}}
	dial := func(hdr []byte) func(*pgx.ConnConfig) {
		return func(cc *pgx.ConnConfig) {
			cc.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
				nc, err := dialFrom("127.0.0.1")(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				if _, err := nc.Write(hdr); err != nil {
					nc.Close()
					return nil, err
				}
				return nc, nil
			}
		}
	}
	c, err := pgConnect(t, e.pgConnString(e.client), dial(v2WithTLVs(t, "203.0.113.7", crc, nil)))
	if err != nil {
		t.Fatalf("good CRC32C: %v", err)
	}
	c.Close(context.Background())

	// The refusal comes before TLS, as the answer to the SSLRequest: the
	// FATAL that libpq prints (pgx reports only "server refused TLS").
	nc, err := dialFrom("127.0.0.1")(context.Background(), "tcp", e.pgAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	bad := v2WithTLVs(t, "203.0.113.7", crc, func(b []byte) { b[len(b)-1] ^= 0xff })
	if _, err := nc.Write(append(bad, 0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f)); err != nil {
		t.Fatal(err)
	}
	msg, err := pgproto3.NewFrontend(nc, nc).Receive()
	er, ok := msg.(*pgproto3.ErrorResponse)
	if err != nil || !ok || er.Severity != "FATAL" || er.Code != "08P01" || !strings.Contains(er.Message, "PROXY protocol v2 header fails its CRC32C checksum") {
		t.Fatalf("got %#v, %v; want FATAL 08P01 naming the CRC32C", msg, err)
	}
	waitFor(t, 5*time.Second, "the refusal's audit line", func() bool { return len(e.refusals("protocol_violation")) == 1 })
}
