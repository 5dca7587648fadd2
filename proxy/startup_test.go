package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadStartupPacket(t *testing.T) {
	pkt := func(length uint32, code uint32, body string) []byte {
		b := binary.BigEndian.AppendUint32(nil, length)
		b = binary.BigEndian.AppendUint32(b, code)
		return append(b, body...)
	}
	for _, tc := range []struct {
		name     string
		in       []byte
		first    []byte
		wantCode uint32
		wantLen  int
		wantErr  string
		rest     int // bytes that must be left unread
	}{
		{name: "SSLRequest, nothing more read", in: append(pkt(8, codeSSLRequest, ""), 0x16, 0x03), wantCode: codeSSLRequest, wantLen: 8, rest: 2},
		{name: "first byte already read", in: pkt(8, codeGSSENCRequest, "")[1:], first: []byte{0}, wantCode: codeGSSENCRequest, wantLen: 8},
		{name: "startup message", in: pkt(18, 196608, "user\x00bob\x00\x00"), wantCode: 196608, wantLen: 18},
		{name: "cancel 3.2 with a long key", in: pkt(12+32, codeCancelRequest, string(make([]byte, 36))), wantCode: codeCancelRequest, wantLen: 44},
		{name: "length below 8", in: pkt(4, 0, ""), wantErr: "invalid length of startup packet: 4"},
		{name: "length above 10000", in: pkt(10001, 196608, ""), wantErr: "invalid length of startup packet: 10001"},
		{name: "length 2^32-1", in: pkt(0xffffffff, 196608, ""), wantErr: "invalid length"},
		{name: "truncated body", in: pkt(20, 196608, "user"), wantErr: io.ErrUnexpectedEOF.Error()},
		{name: "truncated header", in: []byte{0, 0}, wantErr: io.ErrUnexpectedEOF.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := bytes.NewReader(tc.in)
			got, code, err := readStartupPacket(r, tc.first)
			if tc.wantErr != "" {
				if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.wantErr)) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				var ref *Refusal
				if errors.As(err, &ref) && ref.Reason != ReasonProtocolViolation {
					t.Fatalf("reason = %v", ref.Reason)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if code != tc.wantCode || len(got) != tc.wantLen || r.Len() != tc.rest {
				t.Fatalf("code %d len %d rest %d; want %d %d %d", code, len(got), r.Len(), tc.wantCode, tc.wantLen, tc.rest)
			}
		})
	}
}

func TestRedisErrorIsOneLine(t *testing.T) {
	got := string(redisError(&Refusal{Msg: "a\r\nb", Hint: "c\nd"}))
	if got != "-ERR spacegate: a  b (c d)\r\n" {
		t.Fatalf("redisError = %q", got)
	}
}

func TestReasonNames(t *testing.T) {
	for r := ReasonProtocolViolation; r <= ReasonUnsupportedProtocol; r++ {
		if r.String() == "" || r.String() == "unknown" {
			t.Errorf("reason %d has no name", r)
		}
	}
}

// sm builds a StartupMessage of version major.minor around body, which
// holds the parameters and whatever terminator the case wants.
func sm(major, minor uint16, body string) []byte {
	return startupPacket(uint32(major)<<16|uint32(minor), []byte(body))
}

func TestParseStartupMessage(t *testing.T) {
	long := strings.Repeat("a", 63)
	for _, tc := range []struct {
		name     string
		pkt      []byte
		user, db string
		reason   Reason // ReasonNone: accepted
		msg      string
	}{
		{name: "user and database", pkt: sm(3, 0, "user\x00bob\x00database\x00shop\x00\x00"), user: "bob", db: "shop"},
		{name: "database defaults to the user", pkt: sm(3, 0, "user\x00bob\x00\x00"), user: "bob", db: "bob"},
		{name: "empty database defaults to the user", pkt: sm(3, 0, "database\x00\x00user\x00bob\x00\x00"), user: "bob", db: "bob"},
		{name: "other parameters are skipped", pkt: sm(3, 0, "application_name\x00psql\x00user\x00bob\x00_pq_.x\x00y\x00\x00"), user: "bob", db: "bob"},
		{name: "duplicate user: the last one counts", pkt: sm(3, 0, "user\x00alice\x00user\x00bob\x00\x00"), user: "bob", db: "bob"},
		{name: "protocol 3.2", pkt: sm(3, 2, "user\x00bob\x00\x00"), user: "bob", db: "bob"},
		{name: "unknown minor 3.99 is for the upstream to negotiate", pkt: sm(3, 99, "user\x00bob\x00\x00"), user: "bob", db: "bob"},
		{name: "names cut to 63 bytes", pkt: sm(3, 0, "user\x00"+long+"xyz\x00\x00"), user: long, db: long},
		// PostgreSQL reads a last byte that is not zero as a name without a
		// value, stops there and finds it where the terminator belongs.
		{name: "non-zero last byte after a pair", pkt: sm(3, 0, "user\x00bob\x00X"), user: "bob", db: "bob"},

		{name: "empty name ends the list: smuggled second user", pkt: sm(3, 0, "user\x00postgres\x00\x00user\x00alice\x00\x00"),
			reason: ReasonProtocolViolation, msg: "invalid startup packet layout: expected terminator as last byte"},
		{name: "missing terminator", pkt: sm(3, 0, "user\x00bob\x00"), reason: ReasonProtocolViolation, msg: "expected terminator as last byte"},
		{name: "bytes after the terminator", pkt: sm(3, 0, "user\x00bob\x00\x00\x00"), reason: ReasonProtocolViolation, msg: "expected terminator as last byte"},
		{name: "name without a value", pkt: sm(3, 0, "user\x00bob\x00database\x00"), reason: ReasonProtocolViolation, msg: "expected terminator as last byte"},
		{name: "value without its zero", pkt: sm(3, 0, "user\x00bob"), reason: ReasonProtocolViolation, msg: "expected terminator as last byte"},
		{name: "no body at all", pkt: sm(3, 0, ""), reason: ReasonProtocolViolation, msg: "expected terminator as last byte"},
		{name: "terminator only", pkt: sm(3, 0, "\x00"), reason: ReasonUserMissing, msg: "no PostgreSQL user name specified in startup packet"},
		{name: "empty user", pkt: sm(3, 0, "user\x00\x00\x00"), reason: ReasonUserMissing},
		{name: "user emptied by a later duplicate", pkt: sm(3, 0, "user\x00bob\x00user\x00\x00\x00"), reason: ReasonUserMissing},
		{name: "protocol 2.0", pkt: sm(2, 0, "user\x00bob\x00\x00"), reason: ReasonUnsupportedProtocol, msg: "unsupported frontend protocol 2.0: server supports 3.0 to 3.2"},
		{name: "protocol 4.0", pkt: sm(4, 0, "user\x00bob\x00\x00"), reason: ReasonUnsupportedProtocol, msg: "unsupported frontend protocol 4.0"},
		{name: "short packet", pkt: []byte{0, 0, 0, 4}, reason: ReasonProtocolViolation, msg: "invalid length of startup packet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ref := parseStartupMessage(tc.pkt)
			if tc.reason == ReasonNone {
				if ref != nil {
					t.Fatalf("refused: %v", ref)
				}
				if got.user != tc.user || got.database != tc.db {
					t.Fatalf("user %q database %q, want %q %q", got.user, got.database, tc.user, tc.db)
				}
				return
			}
			if ref == nil {
				t.Fatalf("accepted as user %q, want refused for %v", got.user, tc.reason)
			}
			if ref.Reason != tc.reason || !strings.Contains(ref.Msg, tc.msg) {
				t.Fatalf("refused for %v %q, want %v %q", ref.Reason, ref.Msg, tc.reason, tc.msg)
			}
		})
	}
}

func TestCheckCancelPacket(t *testing.T) {
	cancel := func(n int) []byte {
		b := make([]byte, n)
		if n >= 8 {
			binary.BigEndian.PutUint32(b, uint32(n))
			binary.BigEndian.PutUint32(b[4:], codeCancelRequest)
		}
		return b
	}
	for n, want := range map[int]string{
		8:   "invalid length of cancel request packet",
		11:  "invalid length of cancel request packet",
		12:  "invalid length of cancel key in cancel request packet",
		13:  "",
		16:  "", // protocol 3.0
		44:  "", // the 32-byte keys PostgreSQL 18 issues
		268: "",
		269: "invalid length of cancel key in cancel request packet",
	} {
		ref := checkCancelPacket(cancel(n))
		switch {
		case want == "" && ref != nil:
			t.Errorf("%d bytes: refused: %v", n, ref)
		case want != "" && (ref == nil || ref.Msg != want || ref.Reason != ReasonProtocolViolation || !ref.quiet):
			t.Errorf("%d bytes: got %+v, want a quiet protocol violation %q", n, ref, want)
		}
	}
}

// pgReadStartup is ProcessStartupPacket's reading of a protocol 3
// StartupMessage transcribed as literally as Go allows: the body copied
// into a buffer with one zero byte added, C strings read with strlen. It
// is the oracle FuzzParseStartupMessage compares the parser with.
func pgReadStartup(pkt []byte) (user, database string, ok bool) {
	buf := append(append([]byte(nil), pkt[4:]...), 0) // from the version on
	length := len(buf) - 1
	strlen := func(i int) int { return bytes.IndexByte(buf[i:], 0) }
	offset := 4
	for offset < length {
		if buf[offset] == 0 {
			break
		}
		valoffset := offset + strlen(offset) + 1
		if valoffset >= length {
			break
		}
		name := string(buf[offset : offset+strlen(offset)])
		val := string(buf[valoffset : valoffset+strlen(valoffset)])
		switch name {
		case "database":
			database = val
		case "user":
			user = val
		}
		offset = valoffset + strlen(valoffset) + 1
	}
	if offset != length-1 || user == "" {
		return "", "", false
	}
	if database == "" {
		database = user
	}
	return user, database, true
}

func FuzzParseStartupMessage(f *testing.F) {
	for _, body := range []string{
		"user\x00bob\x00\x00",
		"user\x00postgres\x00\x00user\x00alice\x00\x00",
		"user\x00bob\x00X",
		"user\x00bob\x00database\x00",
		"\x00",
		"",
	} {
		f.Add(uint16(3), uint16(0), []byte(body))
	}
	f.Fuzz(func(t *testing.T, major, minor uint16, body []byte) {
		if len(body) > maxStartupPacket {
			return
		}
		pkt := sm(major, minor, string(body))
		got, ref := parseStartupMessage(pkt)
		if major != 3 {
			if ref == nil || ref.Reason != ReasonUnsupportedProtocol {
				t.Fatalf("protocol %d.%d: %v", major, minor, ref)
			}
			return
		}
		user, db, ok := pgReadStartup(pkt)
		if ok != (ref == nil) {
			t.Fatalf("PostgreSQL accepts: %v; parser refuses with %v", ok, ref)
		}
		if ok && (got.user != truncateName(user) || got.database != truncateName(db)) {
			t.Fatalf("parser reads %q/%q, PostgreSQL %q/%q", got.user, got.database, user, db)
		}
		if ref != nil && ref.Reason != ReasonProtocolViolation && ref.Reason != ReasonUserMissing {
			t.Fatalf("reason %v", ref.Reason)
		}
	})
}
