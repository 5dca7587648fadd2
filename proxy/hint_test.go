package proxy

import (
	"errors"
	"net"
	"os/exec"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/spacegate/spacegate/internal/testenv"
)

// TestCertMissingHint: a client without a certificate is told how to send
// one in its own client's terms: libpq's settings for PostgreSQL,
// redis-cli's flags for Redis.
func TestCertMissingHint(t *testing.T) {
	testenv.Require(t, "redis-cli")
	e := newEnv(t, envOptions{})
	c, err := pgConnect(t, e.pgConnString(nil))
	requireRefusal(t, c, err, "28000", "no client certificate was presented")
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && !strings.Contains(pgErr.Hint, "PGSSLCERT") {
		t.Errorf("PostgreSQL hint %q does not name PGSSLCERT", pgErr.Hint)
	}

	host, port, _ := net.SplitHostPort(e.redisAdr)
	out, _ := exec.Command("redis-cli", "--tls", "--cacert", e.pki.CAFile, "-h", host, "-p", port, "ping").CombinedOutput()
	if s := string(out); !strings.Contains(s, "ERR spacegate: no client certificate was presented") ||
		!strings.Contains(s, "redis-cli: add --cert and --key") || strings.Contains(s, "PGSSLCERT") || strings.Contains(s, "libpq") {
		t.Errorf("redis-cli without --cert: %s", out)
	}
}
