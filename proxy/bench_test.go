package proxy

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
)

// BenchmarkSpliceThroughput moves bulk data through the gate: TLS from the
// client, plain TCP to a real upstream socket that discards (upload) or
// sends (download). b.SetBytes makes `go test -bench` report MB/s.
func BenchmarkSpliceThroughput(b *testing.B) {
	const chunk = 1 << 20
	for _, dir := range []string{"upload", "download"} {
		b.Run(dir, func(b *testing.B) {
			peer := startPeer(b, func(nc net.Conn) {
				go func() {
					defer nc.Close()
					if dir == "upload" {
						io.Copy(io.Discard, nc)
						return
					}
					buf := make([]byte, 64<<10)
					for {
						if _, err := nc.Write(buf); err != nil {
							return
						}
					}
				}()
			})
			e := newEnv(b, envOptions{noPostgres: true, redisUpstream: peer.ln.Addr().String()})
			tc, err := tls.Dial("tcp", e.redisAdr, &tls.Config{RootCAs: e.pki.ServerPool(), ServerName: "localhost", Certificates: []tls.Certificate{e.client.TLS}})
			if err != nil {
				b.Fatal(err)
			}
			defer tc.Close()
			buf := make([]byte, chunk)
			b.SetBytes(chunk)
			b.ResetTimer()
			for b.Loop() {
				if dir == "upload" {
					_, err = tc.Write(buf)
				} else {
					_, err = io.ReadFull(tc, buf)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkConnect measures a whole connection through the accept path: TCP
// connect, TLS with a client certificate, the checks, the upstream dial, a
// round trip, and the close. Its cost per connection is what the pending
// pool and the refusal screen add to.
func BenchmarkConnect(b *testing.B) {
	peer := startPeer(b, func(nc net.Conn) {
		go func() {
			defer nc.Close()
			io.Copy(nc, nc)
		}()
	})
	e := newEnv(b, envOptions{noPostgres: true, redisUpstream: peer.ln.Addr().String()})
	cfg := &tls.Config{RootCAs: e.pki.ServerPool(), ServerName: "localhost", Certificates: []tls.Certificate{e.client.TLS}}
	buf := make([]byte, 1)
	for b.Loop() {
		tc, err := tls.Dial("tcp", e.redisAdr, cfg)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := tc.Write([]byte{'x'}); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(tc, buf); err != nil {
			b.Fatal(err)
		}
		tc.Close()
	}
}

// BenchmarkRefusedPlaintext measures the cheapest refusal: a plaintext
// Redis command, refused with -ERR before any TLS.
func BenchmarkRefusedPlaintext(b *testing.B) {
	e := newEnv(b, envOptions{noPostgres: true})
	buf := make([]byte, 512)
	for b.Loop() {
		nc, err := net.Dial("tcp", e.redisAdr)
		if err != nil {
			b.Fatal(err)
		}
		nc.Write([]byte("GET k\r\n")) // not PING: a P may start a PROXY header
		if _, err := nc.Read(buf); err != nil {
			b.Fatal(err)
		}
		nc.Close()
	}
}
