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
