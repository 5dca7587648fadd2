package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/spacegate/spacegate/internal/testenv"
)

func (e *env) redisClient(cert *testenv.ClientCert, dialer func(context.Context, string, string) (net.Conn, error)) *redis.Client {
	tc := &tls.Config{RootCAs: e.pki.ServerPool(), ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if cert != nil {
		tc.Certificates = []tls.Certificate{cert.TLS}
	}
	opts := &redis.Options{Addr: e.redisAdr, TLSConfig: tc, DialTimeout: 5 * time.Second, MaxRetries: -1, Protocol: 2}
	if dialer != nil {
		opts.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
			nc, err := dialer(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return tls.Client(nc, tc), nil
		}
	}
	return redis.NewClient(opts)
}

func TestRedisThroughGate(t *testing.T) {
	e := newEnv(t, envOptions{noPostgres: true})
	rc := e.redisClient(e.client, nil)
	defer rc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	big := strings.Repeat("x", 1<<20)
	if err := rc.Set(ctx, "k", big, 0).Err(); err != nil {
		t.Fatalf("SET through the gate: %v", err)
	}
	if got, err := rc.Get(ctx, "k").Result(); err != nil || got != big {
		t.Fatalf("GET through the gate: %d bytes, %v", len(got), err)
	}

	t.Run("redis-cli --tls", func(t *testing.T) {
		testenv.Require(t, "redis-cli")
		host, port, _ := net.SplitHostPort(e.redisAdr)
		out, err := exec.Command("redis-cli", "--tls", "--cert", e.client.CertFile, "--key", e.client.KeyFile,
			"--cacert", e.pki.CAFile, "-h", host, "-p", port, "ping").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "PONG" {
			t.Fatalf("redis-cli: %v: %s", err, out)
		}
	})
}

func TestRedisRefusals(t *testing.T) {
	e := newEnv(t, envOptions{noPostgres: true})
	expired := e.pki.Client(t, "expired", testenv.Expired())
	for _, tc := range []struct {
		name   string
		cert   *testenv.ClientCert
		from   string
		want   string
		reason string
	}{
		{"no client certificate", nil, "", "ERR spacegate: no client certificate", "cert_missing"},
		{"expired certificate", expired, "", "ERR spacegate: client certificate expired on", "cert_expired"},
		{"source address not in the rules", e.client, "127.0.0.2", "ERR spacegate: source address 127.0.0.2 is not allowed for route cache", "ip_not_allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var dialer func(context.Context, string, string) (net.Conn, error)
			if tc.from != "" {
				dialer = dialFrom(tc.from)
			}
			rc := e.redisClient(tc.cert, dialer)
			defer rc.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := rc.Ping(ctx).Err()
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("PING: %v, want an error starting %q", err, tc.want)
			}
			waitFor(t, 5*time.Second, "audit line", func() bool { return len(e.refusals(tc.reason)) > 0 })
		})
	}

	t.Run("redis-cli without --tls", func(t *testing.T) {
		testenv.Require(t, "redis-cli")
		host, port, _ := net.SplitHostPort(e.redisAdr)
		out, _ := exec.Command("redis-cli", "-h", host, "-p", port, "ping").CombinedOutput()
		if !strings.Contains(string(out), "requires TLS") {
			t.Fatalf("redis-cli without TLS: %s", out)
		}
	})
	t.Run("redis-cli with an expired certificate", func(t *testing.T) {
		testenv.Require(t, "redis-cli")
		host, port, _ := net.SplitHostPort(e.redisAdr)
		out, _ := exec.Command("redis-cli", "--tls", "--cert", expired.CertFile, "--key", expired.KeyFile,
			"--cacert", e.pki.CAFile, "-h", host, "-p", port, "ping").CombinedOutput()
		if !strings.Contains(string(out), "client certificate expired on") {
			t.Fatalf("redis-cli output: %s", out)
		}
	})
}
