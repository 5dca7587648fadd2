package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"time"
)

// startRedis starts TLS with a Redis client. Redis has no preamble: a TLS
// client's first byte is a handshake record at once. Anything else is a
// plaintext command, which is refused with a RESP error that redis-cli shows.
func (c *conn) startRedis(ctx context.Context, first byte) error {
	c.phase = PhaseHandshake
	if first != tlsRecordHandshake {
		c.client = &prefixConn{Conn: c.nc, prefix: []byte{first}}
		return &Refusal{
			Reason: ReasonTLSRequired,
			Msg:    "route " + c.routeName() + " requires TLS with a client certificate",
			Hint:   "use redis-cli --tls --cert postgresql.crt --key postgresql.key --cacert root.crt, or a rediss:// URL",
		}
	}
	return c.startTLS(ctx, []byte{first})
}

// redisCertHint tells a Redis client without a certificate how to send one.
const redisCertHint = "redis-cli: add --cert and --key to --tls; other clients: a rediss:// URL, with the certificate and key in the client's TLS settings"

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

// Bounds on answering a refused Redis client.
const (
	redisRefuseMaxCommands = 16
	redisRefuseMaxBytes    = 64 << 10
	redisRefuseWait        = 2 * time.Second
)

// tellRedis answers every command a refused Redis client sends with the
// refusal, until it closes or a bound is reached. Answering only once would
// not do: clients such as go-redis pipeline set-up commands (CLIENT SETINFO)
// whose errors they ignore, and would then see a bare EOF for the command
// the user typed. The client's bytes are read, never forwarded.
func (c *conn) tellRedis(r *Refusal) {
	line := redisError(r)
	deadline := time.Now().Add(redisRefuseWait)
	_ = c.nc.SetDeadline(deadline)
	rw := c.client
	if rw == nil {
		rw = c.nc // refused before TLS or before the first byte was kept
	}
	br := bufio.NewReaderSize(io.LimitReader(rw, redisRefuseMaxBytes), 4096)
	for range redisRefuseMaxCommands {
		if err := skipRESPCommand(br); err != nil {
			return
		}
		if _, err := rw.Write(line); err != nil {
			return
		}
	}
}

var errRESP = errors.New("malformed RESP command")

// skipRESPCommand reads one command: a RESP array of bulk strings, or an
// inline command (one line), as redis-server accepts both.
func skipRESPCommand(br *bufio.Reader) error {
	head, err := br.ReadSlice('\n')
	if err != nil {
		return err
	}
	if len(head) == 0 || head[0] != '*' {
		return nil // inline command: the line was all of it
	}
	n, err := strconv.Atoi(strings.TrimRight(string(head[1:]), "\r\n"))
	if err != nil || n < 0 || n > 1024 {
		return errRESP
	}
	for range n {
		hdr, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(hdr) == 0 || hdr[0] != '$' {
			return errRESP
		}
		size, err := strconv.Atoi(strings.TrimRight(string(hdr[1:]), "\r\n"))
		if err != nil || size < 0 || size > redisRefuseMaxBytes {
			return errRESP
		}
		if _, err := br.Discard(size + 2); err != nil {
			return err
		}
	}
	return nil
}
