package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	dto "github.com/prometheus/client_model/go"

	"github.com/spacegate/spacegate/internal/testenv"
)

// verdict is how a server answered a start-up packet, as a client sees it.
type verdict struct {
	silent     bool   // closed without a word, as after a CancelRequest
	code, msg  string // refused: the ErrorResponse
	user       string // accepted: SELECT current_user in the session
	negotiated bool   // a NegotiateProtocolVersion came first
}

func (v verdict) String() string {
	switch {
	case v.silent:
		return "closed without an answer"
	case v.code != "":
		return fmt.Sprintf("refused %s %q", v.code, v.msg)
	default:
		return fmt.Sprintf("accepted as %q (negotiated %v)", v.user, v.negotiated)
	}
}

// same reports whether the gate's verdict g is PostgreSQL's p. Messages are
// compared up to their first colon: PostgreSQL 15 says "server supports 3.0
// to 3.0" where the gate, which passes any 3.x on, names 3.2.
func (p verdict) same(g verdict) bool {
	pm, _, _ := strings.Cut(p.msg, ":")
	gm, _, _ := strings.Cut(g.msg, ":")
	return p.silent == g.silent && p.code == g.code && pm == gm && p.user == g.user && p.negotiated == g.negotiated
}

// exchange sends pkt on nc and reads the server's verdict; an accepted
// session is asked for its user.
func exchange(t *testing.T, nc net.Conn, pkt []byte) verdict {
	t.Helper()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.Write(pkt); err != nil {
		t.Fatalf("writing the packet: %v", err)
	}
	br := bufio.NewReader(nc)
	if head, _ := br.Peek(5); string(head) == "EFATA" {
		// A protocol 2 ErrorResponse, for a client of protocol 2.
		msg, err := br.ReadString(0)
		if err != nil {
			t.Fatalf("reading a protocol 2 error: %v", err)
		}
		return verdict{code: "protocol 2", msg: strings.TrimSuffix(strings.TrimPrefix(msg, "EFATAL:  "), "\n\x00")}
	}
	fe := pgproto3.NewFrontend(br, nc)
	var v verdict
	for first := true; ; first = false {
		msg, err := fe.Receive()
		if first && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
			return verdict{silent: true}
		}
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		switch m := msg.(type) {
		case *pgproto3.NegotiateProtocolVersion:
			v.negotiated = true
		case *pgproto3.AuthenticationOk, *pgproto3.ParameterStatus, *pgproto3.BackendKeyData:
		case *pgproto3.ErrorResponse:
			if v.user != "" {
				t.Fatalf("error in the session: %s %s", m.Code, m.Message)
			}
			v.code, v.msg = m.Code, m.Message
			return v
		case *pgproto3.ReadyForQuery:
			if v.user != "" {
				return v
			}
			fe.Send(&pgproto3.Query{String: "select current_user"})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
		case *pgproto3.RowDescription, *pgproto3.CommandComplete:
		case *pgproto3.DataRow:
			v.user = string(m.Values[0])
		default:
			t.Fatalf("unexpected %T", msg)
		}
	}
}

// gateTLS opens a PostgreSQL session to the gate at addr up to the end of
// the TLS handshake, as libpq does, with cert as the client certificate.
func gateTLS(t *testing.T, e *env, addr string, cert *testenv.ClientCert) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	nc.Write(startupPacket(codeSSLRequest, nil))
	var b [1]byte
	if _, err := io.ReadFull(nc, b[:]); err != nil || b[0] != 'S' {
		t.Fatalf("SSLRequest answered %q, %v", b, err)
	}
	tc := tls.Client(nc, &tls.Config{RootCAs: e.pki.ServerPool(), ServerName: "localhost", Certificates: []tls.Certificate{cert.TLS}})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	return tc
}

// cancelPacket is a CancelRequest of n bytes for no backend.
func cancelPacket(n int) []byte {
	b := make([]byte, n)
	binary.BigEndian.PutUint32(b, uint32(n))
	binary.BigEndian.PutUint32(b[4:], codeCancelRequest)
	return b
}

func (e *env) cancelsCounted(route, result string) float64 {
	var pb dto.Metric
	if err := e.srv.metrics.Cancels.WithLabelValues(route, result).Write(&pb); err != nil {
		e.t.Fatal(err)
	}
	return pb.GetCounter().GetValue()
}

// postgresWithRoles starts a PostgreSQL of the test's own with the roles
// alice and long, a name of NAMEDATALEN-1 bytes.
func postgresWithRoles(t *testing.T) (pg *testenv.Postgres, long string) {
	t.Helper()
	pg = testenv.StartPostgresT(t, testenv.PostgresOptions{})
	long = strings.Repeat("a", nameDataLen-1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := pg.Exec(ctx, fmt.Sprintf(`create role alice login; create role %s login`, long)); err != nil {
		t.Fatal(err)
	}
	return pg, long
}

// TestStartupAsPostgresReadsIt sends each packet of a table to a real
// PostgreSQL in plaintext and to the gate inside TLS with a valid client
// certificate, and requires the same verdict: refused with the same SQLSTATE
// and wording, or accepted with the same user in the session.
func TestStartupAsPostgresReadsIt(t *testing.T) {
	pg, long := postgresWithRoles(t)
	e := newEnv(t, envOptions{noRedis: true, pgUpstream: pg.Addr})

	for _, tc := range []struct {
		name string
		pkt  []byte
		want verdict // PostgreSQL 15's verdict, which the gate must give too
	}{
		{"plain", sm(3, 0, "user\x00alice\x00database\x00postgres\x00\x00"), verdict{user: "alice"}},
		{"empty name ends the list: smuggled second user", sm(3, 0, "user\x00postgres\x00\x00user\x00alice\x00\x00"),
			verdict{code: "08P01", msg: "invalid startup packet layout: expected terminator as last byte"}},
		{"missing terminator", sm(3, 0, "user\x00alice\x00database\x00postgres\x00"), verdict{code: "08P01", msg: "invalid startup packet layout"}},
		{"bytes after the terminator", sm(3, 0, "user\x00alice\x00database\x00postgres\x00\x00junk"), verdict{code: "08P01", msg: "invalid startup packet layout"}},
		{"name without a value", sm(3, 0, "user\x00alice\x00database\x00"), verdict{code: "08P01", msg: "invalid startup packet layout"}},
		{"no parameters", sm(3, 0, ""), verdict{code: "08P01", msg: "invalid startup packet layout"}},
		{"non-zero last byte read as the terminator", sm(3, 0, "user\x00alice\x00database\x00postgres\x00X"), verdict{user: "alice"}},
		{"no user", sm(3, 0, "database\x00postgres\x00\x00"), verdict{code: "28000", msg: "no PostgreSQL user name specified in startup packet"}},
		{"empty user", sm(3, 0, "user\x00\x00database\x00postgres\x00\x00"), verdict{code: "28000", msg: "no PostgreSQL user name specified in startup packet"}},
		{"duplicate user: the last counts", sm(3, 0, "user\x00postgres\x00database\x00postgres\x00user\x00alice\x00\x00"), verdict{user: "alice"}},
		{"duplicate user, reversed", sm(3, 0, "user\x00alice\x00database\x00postgres\x00user\x00postgres\x00\x00"), verdict{user: "postgres"}},
		{"unknown user", sm(3, 0, "user\x00mallory\x00database\x00postgres\x00\x00"), verdict{code: "28000", msg: `role "mallory" does not exist`}},
		{"user cut to 63 bytes", sm(3, 0, "user\x00"+long+"xyz\x00database\x00postgres\x00\x00"), verdict{user: long}},
		{"protocol 3.2", sm(3, 2, "user\x00alice\x00database\x00postgres\x00\x00"), verdict{user: "alice", negotiated: true}},
		{"protocol 3.99 is negotiated", sm(3, 99, "user\x00alice\x00database\x00postgres\x00\x00"), verdict{user: "alice", negotiated: true}},
		{"protocol 3.99 with a smuggled user", sm(3, 99, "user\x00postgres\x00\x00user\x00alice\x00\x00"), verdict{code: "08P01", msg: "invalid startup packet layout"}},
		{"unknown protocol option is negotiated", sm(3, 0, "user\x00alice\x00database\x00postgres\x00_pq_.spacegate_test\x001\x00\x00"), verdict{user: "alice", negotiated: true}},
		{"bad replication value: the upstream's own refusal", sm(3, 0, "user\x00alice\x00database\x00postgres\x00replication\x00maybe\x00\x00"),
			verdict{code: "22023", msg: `invalid value for parameter "replication": "maybe"`}},
		{"protocol 2.0", sm(2, 0, "user\x00alice\x00\x00"), verdict{code: "protocol 2", msg: "unsupported frontend protocol 2.0: server supports 3.0 to 3.0"}},
		{"protocol 0.0", sm(0, 0, "user\x00alice\x00\x00"), verdict{code: "0A000", msg: "unsupported frontend protocol 0.0"}},
		{"protocol 1.7", sm(1, 7, "user\x00alice\x00\x00"), verdict{code: "protocol 2", msg: "unsupported frontend protocol 1.7"}},
		{"protocol 4.0", sm(4, 0, "user\x00alice\x00\x00"), verdict{code: "0A000", msg: "unsupported frontend protocol 4.0: server supports 3.0 to 3.0"}},
		{"cancel, 16 bytes", cancelPacket(16), verdict{silent: true}},
		{"cancel, no key", cancelPacket(12), verdict{silent: true}},
		{"cancel, 269 bytes", cancelPacket(269), verdict{silent: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pgV := exchange(t, dialPlain(t, pg.Addr), tc.pkt)
			if !strings.HasPrefix(pgV.msg, tc.want.msg) || !tc.want.same(verdict{silent: pgV.silent, code: pgV.code, msg: tc.want.msg, user: pgV.user, negotiated: pgV.negotiated}) {
				t.Fatalf("PostgreSQL: %v, want %v", pgV, tc.want)
			}
			gate := exchange(t, gateTLS(t, e, e.pgAddr, e.client), tc.pkt)
			if !pgV.same(gate) {
				t.Fatalf("PostgreSQL: %v\ngate:       %v", pgV, gate)
			}
		})
	}

	t.Run("only a well-formed cancel is forwarded", func(t *testing.T) {
		for _, n := range []int{8, 12, 269, 13, 16, 268} {
			before := e.cancelsCounted("db", "forwarded")
			if v := exchange(t, gateTLS(t, e, e.pgAddr, e.client), cancelPacket(n)); !v.silent {
				t.Fatalf("%d-byte cancel: %v", n, v)
			}
			want := 0.0
			if n >= 13 && n <= 268 {
				want = 1
			}
			// The counter moves before the gate closes the connection.
			if got := e.cancelsCounted("db", "forwarded") - before; got != want {
				t.Errorf("%d-byte cancel: forwarded %v times, want %v", n, got, want)
			}
		}
	})
}

// dialPlain opens a plaintext TCP connection to addr for the test.
func dialPlain(t *testing.T, addr string) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

// TestStartupUserFromCert: with postgres_user_from_cert, the user the gate
// checks is the user the session gets, whatever the packet's layout; a
// packet PostgreSQL would refuse is refused by the gate itself and never
// reaches the upstream.
func TestStartupUserFromCert(t *testing.T) {
	pg, long := postgresWithRoles(t)
	addr := testenv.FreeAddr(t)
	e := newEnv(t, envOptions{routes: `  - name: db
    protocol: postgres
    listen: ` + addr + `
    upstream: ` + pg.Addr + `
    ip_rules_file: rules.yaml
    allowed_clients: ["*"]
    postgres_user_from_cert: true
`})
	alice := e.pki.Client(t, "alice")
	for _, tc := range []struct {
		name   string
		cn     string
		pkt    []byte
		want   verdict
		reason string // the gate's own refusal, logged with this reason
	}{
		{"the certificate's user", "alice", sm(3, 0, "user\x00alice\x00database\x00postgres\x00\x00"), verdict{user: "alice"}, ""},
		{"smuggled user after an empty name", "alice", sm(3, 0, "user\x00postgres\x00\x00user\x00alice\x00\x00"),
			verdict{code: "08P01", msg: "invalid startup packet layout: expected terminator as last byte"}, "protocol_violation"},
		{"smuggled user in protocol 3.99", "alice", sm(3, 99, "user\x00postgres\x00\x00user\x00alice\x00\x00"),
			verdict{code: "08P01", msg: "invalid startup packet layout: expected terminator as last byte"}, "protocol_violation"},
		{"duplicate user ending with the certificate's", "alice", sm(3, 0, "user\x00postgres\x00database\x00postgres\x00user\x00alice\x00\x00"), verdict{user: "alice"}, ""},
		{"duplicate user ending with another", "alice", sm(3, 0, "user\x00alice\x00database\x00postgres\x00user\x00postgres\x00\x00"),
			verdict{code: "28000", msg: `PostgreSQL user "postgres" does not match the client certificate`}, "user_mismatch"},
		{"non-zero last byte", "alice", sm(3, 0, "user\x00alice\x00database\x00postgres\x00X"), verdict{user: "alice"}, ""},
		{"protocol 3.99 is negotiated", "alice", sm(3, 99, "user\x00alice\x00database\x00postgres\x00\x00"), verdict{user: "alice", negotiated: true}, ""},
		{"long user cut to the certificate's", long, sm(3, 0, "user\x00"+long+"xyz\x00database\x00postgres\x00\x00"), verdict{user: long}, ""},
		// PostgreSQL would log this certificate's bearer in as the 63-byte
		// role: the gate compares the cut name and refuses.
		{"certificate user longer than a PostgreSQL name", long + "b", sm(3, 0, "user\x00"+long+"b\x00database\x00postgres\x00\x00"),
			verdict{code: "28000", msg: `PostgreSQL user "` + long + `" does not match the client certificate`}, "user_mismatch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert := alice
			if tc.cn != "alice" {
				cert = e.pki.Client(t, fmt.Sprintf("cn%d", len(tc.cn)), testenv.WithCN(tc.cn))
			}
			before := 0
			if tc.reason != "" {
				before = len(e.refusals(tc.reason))
			}
			nc := gateTLS(t, e, addr, cert)
			got := exchange(t, nc, tc.pkt)
			nc.Close() // the gate logs a refusal once the client has gone
			if got.code != tc.want.code || !strings.HasPrefix(got.msg, tc.want.msg) || got.user != tc.want.user || got.negotiated != tc.want.negotiated {
				t.Fatalf("gate: %v, want %v", got, tc.want)
			}
			if tc.reason != "" {
				waitFor(t, 5*time.Second, "the gate's own refusal for "+tc.reason, func() bool { return len(e.refusals(tc.reason)) == before+1 })
			}
		})
	}
}
