package proxy

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// TestWholeFamilyRuleWarning: a rule that admits a whole address family
// loads, with a warning line at start-up and at each reload.
func TestWholeFamilyRuleWarning(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true, rules: []string{"::ffff:0.0.0.0/96"}})
	// The file watcher may reload too: look at one generation's lines.
	warnings := func() []string {
		var out []string
		for _, l := range e.logs.FilterMessage("configuration warning").FilterField(zap.Uint64("generation", e.generation())).All() {
			out = append(out, l.ContextMap()["warning"].(string))
		}
		return out
	}
	w := warnings()
	if len(w) != 1 || !strings.HasPrefix(w[0], "route db: "+e.dir+"/rules.yaml: the rule at line 2 (0.0.0.0/0, id ") ||
		!strings.Contains(w[0], "admits every IPv4 address") {
		t.Fatalf("start-up warnings %q", w)
	}
	e.writeRules("rules.yaml", "127.0.0.1/32", "::/0")
	if err := e.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the warning of the reload", func() bool {
		w := warnings()
		return len(w) == 1 && strings.Contains(w[0], "the rule at line 5 (::/0, id ") && strings.Contains(w[0], "admits every IPv6 address")
	})
	e.writeRules("rules.yaml", "127.0.0.1/32")
	if err := e.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if w := warnings(); len(w) != 0 {
		t.Fatalf("a reload without such a rule warned: %q", w)
	}
}
