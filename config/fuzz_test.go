package config

import (
	"strings"
	"testing"
	"time"
)

// FuzzParse: no input makes Parse hang, panic or return a problem that
// does not name the file.
func FuzzParse(f *testing.F) {
	const file = "fuzz.yaml"
	f.Fuzz(func(t *testing.T, data []byte) {
		start := time.Now()
		cfg, err := Parse(data, file)
		// Generous: the point is to catch a parse that never ends or
		// grows with the square of a nesting depth, not a slow machine.
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("Parse took %s for %d bytes", d, len(data))
		}
		if err == nil {
			if cfg == nil {
				t.Fatal("nil config without error")
			}
			return
		}
		// Every problem names the file, as `spacegate check` prints them.
		for _, p := range Problems(err) {
			if p == nil || !strings.HasPrefix(p.Error(), file) {
				t.Fatalf("problem %q does not name the file", p)
			}
		}
	})
}
