package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/spacegate/spacegate/config"
)

// NewLogger builds the zap logger a config.Log describes: JSON by default,
// with RFC 3339 timestamps so the audit lines read well in any log store.
func NewLogger(lc config.Log) (*zap.Logger, error) {
	level := zapcore.InfoLevel
	if lc.Level != "" {
		if err := level.Set(lc.Level); err != nil {
			return nil, fmt.Errorf("log.level: %w", err)
		}
	}
	zc := zap.NewProductionConfig()
	if lc.Format == "console" {
		zc = zap.NewDevelopmentConfig()
	}
	zc.Level = zap.NewAtomicLevelAt(level)
	zc.EncoderConfig.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	zc.EncoderConfig.TimeKey = "time"
	zc.Sampling = nil // an audit log must not drop lines
	zc.DisableStacktrace = true
	return zc.Build()
}

// Bounds on refusal logging. A stranger can make the gate refuse as fast as
// it can connect; each refusal is counted in the metrics, but only the
// first few per source and reason in a window are logged in full, and the
// rest in one summary line per source and reason when the window ends.
const (
	refusalLogWindow  = 10 * time.Second
	refusalLogBurst   = 5    // full lines per source and reason in a window
	refusalLogSources = 4096 // sources tracked at once; the rest count as one
	// courtesyRefusals is how many refusals a source that no route of the
	// listener allows gets in a window (this one or the last), each after
	// a full TLS handshake, before its connections are closed before TLS.
	// Any refusal counts, not only ip_not_allowed: a ClientHello flood
	// hangs up before the source is checked.
	courtesyRefusals = 10
)

// refusalKey counts refusals of one reason from one source.
type refusalKey struct {
	src    netip.Addr // the zero Addr stands for sources beyond refusalLogSources
	reason Reason
}

// refusalLog bounds the refusal lines and keeps the per-source counts that
// the courtesy cap reads.
type refusalLog struct {
	mu      sync.Mutex
	log     *zap.Logger
	start   time.Time // of the current window
	counts  map[refusalKey]int
	sources map[netip.Addr]int // refusals per source this window
	// notAllowed counts, per source, the refusals of a source no route
	// allows, in this window and the last.
	notAllowed, lastNotAllowed map[netip.Addr]int
}

func newRefusalLog(log *zap.Logger) *refusalLog {
	return &refusalLog{log: log, start: time.Now(), counts: map[refusalKey]int{}, sources: map[netip.Addr]int{},
		notAllowed: map[netip.Addr]int{}, lastNotAllowed: map[netip.Addr]int{}}
}

// note counts a refusal and reports whether it is to be logged in full.
// stranger says that no route of the listener allows src.
func (r *refusalLog) note(src netip.Addr, reason Reason, stranger bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.sources[src]; !ok && len(r.sources) >= refusalLogSources {
		src = netip.Addr{}
	}
	r.sources[src]++
	k := refusalKey{src, reason}
	r.counts[k]++
	if stranger {
		if _, ok := r.notAllowed[src]; ok || len(r.notAllowed) < refusalLogSources {
			r.notAllowed[src]++
		}
	}
	return r.counts[k] <= refusalLogBurst
}

// courtesySpent reports whether src, a source no route allows, has been
// refused more than courtesyRefusals times in this window or the last: its
// next connections are closed before TLS.
func (r *refusalLog) courtesySpent(src netip.Addr) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.notAllowed[src] > courtesyRefusals || r.lastNotAllowed[src] > courtesyRefusals
}

// flush ends the window: it writes one summary line per source and reason
// whose lines were suppressed, and starts a new window.
func (r *refusalLog) flush(now time.Time) {
	r.mu.Lock()
	counts, start := r.counts, r.start
	r.counts, r.sources, r.start = map[refusalKey]int{}, map[netip.Addr]int{}, now
	r.lastNotAllowed, r.notAllowed = r.notAllowed, map[netip.Addr]int{}
	r.mu.Unlock()
	window := now.Sub(start).Round(time.Millisecond)
	for k, n := range counts {
		if n <= refusalLogBurst {
			continue
		}
		src := "other"
		if k.src.IsValid() {
			src = k.src.String()
		}
		r.log.Warn("connections refused (summary)", zap.String("source", src), zap.String("reason", k.reason.String()),
			zap.Int("count", n), zap.Int("logged", refusalLogBurst), zap.Duration("window", window))
	}
}

// run flushes every window until ctx ends, and once more then.
func (r *refusalLog) run(ctx context.Context) {
	t := time.NewTicker(refusalLogWindow)
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			r.flush(now)
		case <-ctx.Done():
			r.flush(time.Now())
			return
		}
	}
}
