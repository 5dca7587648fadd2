package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

// The seed corpora are in testdata/fuzz/FuzzXxx and run with go test. Run a
// target for longer with
//
//	go test -run '^$' -fuzz FuzzReadStartupPacket -fuzztime 2m ./proxy/

// countingReader is a reader over data that records how much of it was
// consumed, so a fuzz target can tell a parser that read past its message.
// A Read returns at most chunk bytes (0: no limit), as a socket may.
type countingReader struct {
	data  []byte
	n     int
	chunk int
}

func (r *countingReader) Read(p []byte) (int, error) {
	if r.n == len(r.data) {
		return 0, io.EOF
	}
	if r.chunk > 0 && len(p) > r.chunk {
		p = p[:r.chunk]
	}
	k := copy(p, r.data[r.n:])
	r.n += k
	return k, nil
}

// checkReadError fails t unless err is a protocol violation or the end of
// the input: nothing else may come out of a reader of client bytes.
func checkReadError(t *testing.T, err error) {
	t.Helper()
	var ref *Refusal
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, errNotProxyHeader):
	case errors.As(err, &ref) && ref.Reason == ReasonProtocolViolation:
	default:
		t.Fatalf("error %v (%T), want a protocol violation or EOF", err, err)
	}
}

func FuzzReadStartupPacket(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, preRead bool, chunk uint8) {
		var first []byte
		in := data
		if preRead && len(in) > 0 {
			first, in = in[:1], in[1:]
		}
		r := &countingReader{data: in, chunk: int(chunk)}
		pkt, code, err := readStartupPacket(r, first)
		consumed := len(first) + r.n

		// The header may always be read; the body only when the length
		// in it is one PostgreSQL accepts, and never past it.
		limit := 8
		if len(data) >= 4 {
			if n := binary.BigEndian.Uint32(data); n >= 8 && n <= maxStartupPacket {
				limit = int(n)
			}
		}
		if consumed > limit {
			t.Fatalf("consumed %d bytes, more than the %d of the packet", consumed, limit)
		}
		if len(pkt) > maxStartupPacket || cap(pkt) > maxStartupPacket {
			t.Fatalf("packet of len %d cap %d, over the %d-byte limit", len(pkt), cap(pkt), maxStartupPacket)
		}
		if err != nil {
			checkReadError(t, err)
			if pkt != nil {
				t.Fatalf("packet %d bytes returned with error %v", len(pkt), err)
			}
			return
		}
		n := binary.BigEndian.Uint32(data)
		switch {
		case len(pkt) != int(n) || consumed != len(pkt):
			t.Fatalf("packet %d bytes, consumed %d, length field %d", len(pkt), consumed, n)
		case !bytes.Equal(pkt, data[:n]):
			t.Fatalf("packet %x is not the input's first %d bytes", pkt, n)
		case code != binary.BigEndian.Uint32(data[4:8]):
			t.Fatalf("code %d, want %d", code, binary.BigEndian.Uint32(data[4:8]))
		}
	})
}

func FuzzReadProxyHeader(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		if len(data) == 0 {
			return
		}
		r := &countingReader{data: data[1:], chunk: int(chunk)}
		src, ok, err := readProxyHeader(r, data[0])
		consumed := 1 + r.n

		limit := 1
		switch data[0] {
		case proxyV1Sig[0]:
			limit = proxyV1MaxLen
		case proxyV2Sig[0]:
			limit = 16 + proxyV2MaxLen
		}
		if consumed > limit {
			t.Fatalf("consumed %d bytes, more than a header's %d", consumed, limit)
		}
		if err != nil {
			checkReadError(t, err)
			if ok {
				t.Fatalf("ok with error %v", err)
			}
			return
		}
		// A header ends exactly where the spec says: at the first LF
		// (v1), or after the length its fixed part announces (v2).
		switch data[0] {
		case proxyV1Sig[0]:
			if i := bytes.IndexByte(data, '\n'); i != consumed-1 {
				t.Fatalf("v1 header consumed %d bytes, first LF at %d", consumed, i)
			}
		case proxyV2Sig[0]:
			if want := 16 + int(binary.BigEndian.Uint16(data[14:16])); consumed != want {
				t.Fatalf("v2 header consumed %d bytes, announces %d", consumed, want)
			}
			// An accepted header's TLVs split cleanly, by go-proxyproto's
			// own reading of the lengths.
			if fam := int(data[13] >> 4); fam < len(v2AddrLen) && 16+v2AddrLen[fam] <= consumed {
				if _, err := proxyproto.SplitTLVs(data[16+v2AddrLen[fam] : consumed]); err != nil {
					t.Fatalf("accepted a header whose TLVs do not split: %v", err)
				}
			}
		}
		if ok && (!src.IsValid() || src.Addr().Is4In6() || src.Addr().Zone() != "") {
			t.Fatalf("source %v: want a valid address, unmapped and without zone", src)
		}
		if !ok && src.IsValid() {
			t.Fatalf("source %v returned with ok false", src)
		}
	})
}

func FuzzParseConfig(f *testing.F) {
	const file = "fuzz.yaml"
	f.Fuzz(func(t *testing.T, data []byte) {
		start := time.Now()
		cfg, err := ParseConfig(data, file)
		// Generous: the point is to catch a parse that never ends or
		// grows with the square of a nesting depth, not a slow machine.
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("ParseConfig took %s for %d bytes", d, len(data))
		}
		if err == nil {
			if cfg == nil {
				t.Fatal("nil config without error")
			}
			return
		}
		// Every problem names the file, as `spacegate check` prints them.
		for _, p := range Problems(err) {
			if p == nil || !strings.HasPrefix(p.Error(), file) {
				t.Fatalf("problem %q does not name the file", p)
			}
		}
	})
}
