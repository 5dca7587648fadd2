package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"github.com/spacegate/spacegate/internal/testenv"
)

// startProxies writes the configuration of spacegate and every peer, starts
// them, and lists the targets in the order they are measured in round one.
func (e *env) startProxies(ctx context.Context, gateDir, tlsDir string, cred *syscall.Credential) error {
	a, err := testenv.FreeAddrs(7)
	if err != nil {
		return err
	}
	gatePG, gateRedis, stPG, stRedis, hpPG, hpRedis, pbPG := a[0], a[1], a[2], a[3], a[4], a[5], a[6]
	// Each proxy holds two descriptors per connection.
	maxConn := (e.fdLimit - 200) / 2

	gateConf := filepath.Join(gateDir, "bench.yaml")
	if err := writeFile(gateConf, fmt.Sprintf(gateConfig, maxConn, gatePG, e.pg.Addr, gateRedis, e.redis.Addr), 0o644, nil); err != nil {
		return err
	}
	gate := &service{
		name:    targetSpacegate,
		argv:    []string{e.spacegate, "serve", "--config", gateConf},
		dir:     gateDir,
		logPath: filepath.Join(e.work, "spacegate.log"),
		addrs:   []string{gatePG, gateRedis},
	}

	stDir := filepath.Join(e.work, "stunnel")
	stConf := filepath.Join(stDir, "stunnel.conf")
	crt, key, ca := filepath.Join(tlsDir, "server.crt"), filepath.Join(tlsDir, "server.key"), filepath.Join(tlsDir, "ca.crt")
	if err := os.Mkdir(stDir, 0o755); err != nil {
		return fmt.Errorf("creating stunnel directory: %w", err)
	}
	if err := writeFile(stConf, fmt.Sprintf(stunnelConfig, stPG, e.pg.Addr, crt, key, ca, stRedis, e.redis.Addr, crt, key, ca), 0o644, nil); err != nil {
		return err
	}
	st := &service{
		name:    targetStunnel,
		argv:    []string{e.tools["stunnel"], stConf},
		dir:     stDir,
		logPath: filepath.Join(e.work, "stunnel.log"),
		addrs:   []string{stPG, stRedis},
	}

	hpDir := filepath.Join(e.work, "haproxy")
	hpConf := filepath.Join(hpDir, "haproxy.cfg")
	if err := os.Mkdir(hpDir, 0o755); err != nil {
		return fmt.Errorf("creating HAProxy directory: %w", err)
	}
	if err := writeFile(hpConf, fmt.Sprintf(haproxyConfig, maxConn, maxConn, hpPG, e.pg.Addr, hpRedis, e.redis.TLSAddr), 0o644, nil); err != nil {
		return err
	}
	hp := &service{
		name:    targetHAProxy,
		argv:    []string{e.tools["haproxy"], "-db", "-f", hpConf},
		dir:     hpDir,
		logPath: filepath.Join(e.work, "haproxy.log"),
		addrs:   []string{hpPG, hpRedis},
	}

	pbDir := filepath.Join(e.work, "pgbouncer")
	if err := os.Mkdir(pbDir, 0o755); err != nil {
		return fmt.Errorf("creating PgBouncer directory: %w", err)
	}
	if err := chown(pbDir, cred); err != nil {
		return err
	}
	users := filepath.Join(pbDir, "userlist.txt")
	if err := writeFile(users, `"postgres" ""`+"\n", 0o600, cred); err != nil {
		return err
	}
	pbConf := filepath.Join(pbDir, "pgbouncer.ini")
	host, port := splitAddr(pbPG)
	pgHost, pgPort := splitAddr(e.pg.Addr)
	if err := writeFile(pbConf, fmt.Sprintf(pgbouncerConfig, pgHost, pgPort, host, port, users, ca, crt, key), 0o600, cred); err != nil {
		return err
	}
	pbLog := filepath.Join(pbDir, "pgbouncer.log")
	if err := writeFile(pbLog, "", 0o644, cred); err != nil {
		return err
	}
	pb := &service{
		name:    targetPgBouncer,
		argv:    []string{e.tools["pgbouncer"], pbConf},
		dir:     pbDir,
		logPath: pbLog,
		cred:    cred,
		addrs:   []string{pbPG},
	}

	e.services = []*service{gate, st, hp, pb}
	for _, s := range e.services {
		if err := s.start(ctx); err != nil {
			return err
		}
	}
	e.targets = []*target{
		{name: targetDirect, role: roleDirect, pgAddr: e.pg.Addr, redisAddr: e.redis.TLSAddr},
		{name: targetHAProxy, role: roleFloor, svc: hp, pgAddr: hpPG, redisAddr: hpRedis},
		{name: targetStunnel, role: rolePeer, svc: st, pgAddr: stPG, redisAddr: stRedis},
		{name: targetPgBouncer, role: rolePeer, svc: pb, pgAddr: pbPG},
		{name: targetSpacegate, role: roleSubject, svc: gate, pgAddr: gatePG, redisAddr: gateRedis},
	}
	return nil
}

// gateConfig is spacegate's configuration, in the quickstart's directory
// so that its relative paths hold: max connections, then listen and
// upstream of the PostgreSQL and the Redis route. The route names are the
// quickstart's, which its client certificate is issued for.
const gateConfig = `# written by bench
log:
  level: info
  format: json
tls:
  cert_file: pki/server.crt
  key_file: pki/server.key
  client_ca_file: pki/ca.crt
  crl_file: pki/ca.crl
  min_version: "1.2"
pki:
  dir: pki
limits:
  max_connections: %d
  handshake_timeout: 10s
  upstream_connect_timeout: 5s
  drain_timeout: 1s
routes:
  - name: dev-postgres
    protocol: postgres
    listen: %s
    upstream: %s
    ip_rules_file: rules/dev-postgres.yaml
  - name: dev-redis
    protocol: redis
    listen: %s
    upstream: %s
    ip_rules_file: rules/dev-redis.yaml
`

// stunnelConfig: a pgsql service and a Redis service, each terminating
// TLS and requiring a client certificate of the space CA.
const stunnelConfig = `; written by bench
foreground = yes
syslog = no
pid =
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1

[pg]
accept = %s
connect = %s
protocol = pgsql
cert = %s
key = %s
CAfile = %s
verifyChain = yes
requireCert = yes

[redis]
accept = %s
connect = %s
cert = %s
key = %s
CAfile = %s
verifyChain = yes
requireCert = yes
`

// haproxyConfig: TCP passthrough; the client speaks TLS to the server
// itself (PostgreSQL ssl=on, Redis tls-port). Like spacegate's rules, it
// admits 127.0.0.1 only, refusing other sources at accept, which is how
// an operator would keep the flood scenario's stranger from PostgreSQL.
const haproxyConfig = `# written by bench
global
    maxconn %d

defaults
    mode tcp
    maxconn %d
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend pg
    bind %s
    tcp-request connection reject unless { src 127.0.0.1 }
    default_backend pg

backend pg
    server pg %s

frontend redis
    bind %s
    tcp-request connection reject unless { src 127.0.0.1 }
    default_backend redis

backend redis
    server redis %s
`

// pgbouncerConfig: session pooling, TLS from clients with a verified
// certificate, plain TCP to the server.
const pgbouncerConfig = `;; written by bench
[databases]
postgres = host=%s port=%s dbname=postgres user=postgres

[pgbouncer]
listen_addr = %s
listen_port = %s
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = session
max_client_conn = 2000
default_pool_size = 100
client_tls_sslmode = verify-full
client_tls_ca_file = %s
client_tls_cert_file = %s
client_tls_key_file = %s
server_tls_sslmode = disable
logfile =
pidfile =
`

// writeFile writes a file and gives it to cred's user when cred is not nil.
func writeFile(path, data string, mode os.FileMode, cred *syscall.Credential) error {
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return chown(path, cred)
}

// splitAddr splits "host:port"; the harness makes every address itself,
// so it always parses.
func splitAddr(addr string) (host, port string) {
	host, port, _ = net.SplitHostPort(addr)
	return host, port
}
