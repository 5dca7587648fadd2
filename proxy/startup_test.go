package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
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
	for r := ReasonProtocolViolation; r <= ReasonShutdown; r++ {
		if r.String() == "" || r.String() == "unknown" {
			t.Errorf("reason %d has no name", r)
		}
	}
}

func TestClientExpiryCollectorForgetsOldIdentities(t *testing.T) {
	now := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	c := &clientExpiryCollector{desc: prometheus.NewDesc("x", "x", []string{"route", "identity"}, nil),
		seen: map[[2]string]clientSeen{}, ttl: time.Hour, now: func() time.Time { return now }}
	c.observe("db", "old", now.Add(48*time.Hour))
	c.observe("db", "old", now.Add(72*time.Hour)) // the nearest expiry is kept
	now = now.Add(30 * time.Minute)
	c.observe("db", "new", now.Add(400*24*time.Hour))
	collect := func() map[string]float64 {
		ch := make(chan prometheus.Metric, 10)
		c.Collect(ch)
		close(ch)
		out := map[string]float64{}
		for m := range ch {
			var pb dto.Metric
			m.Write(&pb)
			// Labels sort by name: identity, then route.
			out[pb.GetLabel()[0].GetValue()] = pb.GetGauge().GetValue()
		}
		return out
	}
	if got := collect(); len(got) != 2 || got["old"] != float64(now.Add(-30*time.Minute).Add(48*time.Hour).Unix()) {
		t.Fatalf("collected %v", got)
	}
	now = now.Add(45 * time.Minute) // "old" last seen 75 min ago, beyond the TTL
	if got := collect(); len(got) != 1 || got["new"] == 0 {
		t.Fatalf("after the TTL: %v", got)
	}
}

// TestSpliceBufGrowsForBulkAndShrinksWhenIdle: small reads keep the small
// buffer; a read that fills it switches to a pooled large one, which goes
// back to the pool once reads are small again.
func TestSpliceBufGrowsForBulkAndShrinksWhenIdle(t *testing.T) {
	pool := &sync.Pool{New: func() any { b := make([]byte, spliceBufSize); return &b }}
	b := newSpliceBuf(pool)
	for _, step := range []struct {
		last int
		want int
	}{
		{0, spliceSmallBufSize},
		{100, spliceSmallBufSize},
		{spliceSmallBufSize, spliceBufSize}, // filled: bulk
		{spliceBufSize, spliceBufSize},
		{9000, spliceBufSize}, // still bulk-sized
		{10, spliceSmallBufSize},
	} {
		if got := len(b.next(step.last)); got != step.want {
			t.Fatalf("after a read of %d: buffer of %d, want %d", step.last, got, step.want)
		}
	}
	if b.big != nil {
		t.Fatal("large buffer kept after small reads")
	}
}
