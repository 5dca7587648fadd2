package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// idleDialers is how many connections are opened at once.
const idleDialers = 32

// clientTLS returns a TLS client config with the client bundle. Session
// resumption stays off, as in libpq, so every connection is a full
// handshake.
func (e *env) clientTLS() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(e.client.cert, e.client.key)
	if err != nil {
		return nil, fmt.Errorf("loading client certificate: %w", err)
	}
	pem, err := os.ReadFile(e.client.rootCA)
	if err != nil {
		return nil, fmt.Errorf("reading root CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("reading root CA %s: no PEM certificate in it", e.client.rootCA)
	}
	// X25519 and P-256 only, as the OpenSSL 3.0 of libpq and
	// redis-benchmark offers: Go would otherwise offer the hybrid
	// X25519MLKEM768, which a Go server may pick and the OpenSSL peers do
	// not know, so its cost would fall on spacegate alone.
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool,
		CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256}}, nil
}

// redisPingTLS opens a TLS connection to a Redis path, sends PING and waits
// for PONG, and returns the open connection.
func redisPingTLS(ctx context.Context, cfg *tls.Config, addr string) (net.Conn, error) {
	d := tls.Dialer{Config: cfg}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)
	if _, err := io.WriteString(c, "PING\r\n"); err != nil {
		c.Close()
		return nil, err
	}
	line, err := bufio.NewReaderSize(c, 64).ReadString('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("reading PING reply: %w", err)
	}
	if line != "+PONG\r\n" {
		c.Close()
		return nil, fmt.Errorf("PING replied %q, expected +PONG", line)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// idle restarts the target's proxy, opens n TLS connections to its Redis
// path (each answering a PING, so the proxy has spliced it), and reports
// the growth of the proxy's RSS per connection in KiB, and its CPU time
// per connection opened.
func (e *env) idle(ctx context.Context, t *target, n int) (Sample, error) {
	var s Sample
	if err := t.svc.restart(ctx); err != nil {
		return s, err
	}
	cfg, err := e.clientTLS()
	if err != nil {
		return s, err
	}
	// One connection first, so that lazily made state (TLS config, pools,
	// the first goroutines) is part of the baseline.
	c, err := redisPingTLS(ctx, cfg, t.redisAddr)
	if err != nil {
		return s, fmt.Errorf("first connection through %s: %w", t.name, err)
	}
	c.Close()
	time.Sleep(300 * time.Millisecond)
	pid := t.svc.proc.pid()
	rss0, _, err := memory(pid)
	if err != nil {
		return s, err
	}
	cpu0, err := cpuTime(pid)
	if err != nil {
		return s, err
	}
	start := time.Now()
	conns := make([]net.Conn, n)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		errs    []error
		next    int
		dialCtx context.Context
		stop    context.CancelFunc
	)
	dialCtx, stop = context.WithCancel(ctx)
	defer stop()
	for range idleDialers {
		wg.Go(func() {
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n {
					return
				}
				c, err := redisPingTLS(dialCtx, cfg, t.redisAddr)
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("connection %d of %d through %s: %w", i+1, n, t.name, err))
					mu.Unlock()
					stop()
					return
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	s.Seconds = time.Since(start).Seconds()
	if len(errs) > 0 {
		return s, errors.Join(errs[0], fmt.Errorf("%d connections failed", len(errs)))
	}
	cpu1, err := cpuTime(pid)
	if err != nil {
		return s, err
	}
	// Let the proxy settle (a goroutine may still be growing a buffer).
	time.Sleep(time.Second)
	rss1, peak, err := memory(pid)
	if err != nil {
		return s, err
	}
	s.CPUus = float64((cpu1 - cpu0).Microseconds()) / float64(n)
	s.Ops = int64(n)
	s.Value = float64(rss1-rss0) / float64(n) / 1024
	s.PeakRSS = peak
	return s, nil
}
