package proxy

import (
	"fmt"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// NewLogger builds the zap logger a LogConfig describes: JSON by default,
// with RFC 3339 timestamps so the audit lines read well in any log store.
func NewLogger(lc LogConfig) (*zap.Logger, error) {
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
