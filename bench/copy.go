package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// copyRowBytes is the size of one line of COPY text output: 1023 bytes
// and a newline.
const copyRowBytes = 1024

// countWriter counts what is written to it and keeps nothing.
type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}

// copyOut runs COPY ... TO STDOUT of mib MiB through addr with the client
// bundle and returns the bytes received and the seconds it took, from the
// query's start to its last byte.
func (e *env) copyOut(ctx context.Context, addr string, mib int) (int64, float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute+time.Duration(mib)*100*time.Millisecond)
	defer cancel()
	conn, err := pgconn.Connect(ctx, e.connInfo(addr))
	if err != nil {
		return 0, 0, fmt.Errorf("connecting to %s: %w", addr, err)
	}
	defer conn.Close(context.Background())
	rows := int64(mib) << 20 / copyRowBytes
	sql := fmt.Sprintf("COPY (SELECT repeat('x', %d) FROM generate_series(1, %d)) TO STDOUT", copyRowBytes-1, rows)
	var w countWriter
	start := time.Now()
	if _, err := conn.CopyTo(ctx, &w, sql); err != nil {
		return w.n, 0, fmt.Errorf("COPY TO STDOUT through %s: %w", addr, err)
	}
	secs := time.Since(start).Seconds()
	if want := rows * copyRowBytes; w.n != want {
		return w.n, secs, fmt.Errorf("COPY through %s gave %d bytes, expected %d", addr, w.n, want)
	}
	return w.n, secs, nil
}
