package proxy

import (
	"context"
	"io"
	"strings"
)

// startRedis starts TLS with a Redis client. Redis has no preamble: a TLS
// client's first byte is a handshake record at once. Anything else is a
// plaintext command, which is refused with a RESP error that redis-cli shows.
func (c *conn) startRedis(ctx context.Context) error {
	c.phase = PhaseHandshake
	var first [1]byte
	if _, err := io.ReadFull(c.nc, first[:]); err != nil {
		return err
	}
	if first[0] != tlsRecordHandshake {
		return &Refusal{
			Reason: ReasonTLSRequired,
			Msg:    "route " + c.route.Name + " requires TLS with a client certificate",
			Hint:   "use redis-cli --tls --cert postgresql.crt --key postgresql.key --cacert root.crt, or a rediss:// URL",
		}
	}
	return c.startTLS(ctx, first[:])
}

// redisError encodes r as a RESP error line. RESP errors are one line: any
// CR or LF in the text would end it early and corrupt the stream.
func redisError(r *Refusal) []byte {
	msg := r.Msg
	if r.Hint != "" {
		msg += " (" + r.Hint + ")"
	}
	msg = strings.NewReplacer("\r", " ", "\n", " ").Replace(msg)
	return []byte("-ERR spacegate: " + msg + "\r\n")
}
