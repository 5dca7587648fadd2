package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spacegate/spacegate/allowlist"
)

func TestIPRulesCreateGetDelete(t *testing.T) {
	e := newAdminEnv(t, "127.0.0.1:1", "127.0.0.1:1")
	// No gate runs: every change is made, and exits 3 as not confirmed.
	out := e.mustRunCode(t, exitWait, "ip-rules", "create", "db", "--cidr", "1.2.3.4/32", "--description", "My Office IP")
	// The seed's format: one "key: value" line per field, in this order.
	keys := []string{"cidr", "created_at", "description", "id", "status", "updated_at"}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	fields := map[string]string{}
	for i, line := range lines {
		k, v, _ := strings.Cut(line, ": ")
		if i < len(keys) && k != keys[i] {
			t.Errorf("line %d of ip-rules create is %q, want key %s", i+1, line, keys[i])
		}
		fields[k] = v
	}
	if len(lines) != len(keys) || fields["cidr"] != "1.2.3.4/32" || fields["description"] != "My Office IP" ||
		fields["status"] != ruleUnreachable || !strings.HasSuffix(fields["created_at"], " +0000") {
		t.Errorf("ip-rules create printed:\n%s", out)
	}
	id := fields["id"]

	var got ruleView
	e.mustJSONCode(t, exitWait, &got, "ip-rules", "get", "db", "--id", strings.ToUpper(id))
	if got.ID != id || got.CIDR != "1.2.3.4/32" || got.Description != "My Office IP" || got.Status != ruleUnreachable || got.CreatedAt.IsZero() || !got.UpdatedAt.Equal(got.CreatedAt) {
		t.Errorf("ip-rules get --json = %+v", got)
	}
	rules, err := allowlist.Load(e.path("rules", "db.yaml"))
	if err != nil || len(rules.Rules) != 1 || rules.Rules[0].ID != id {
		t.Errorf("rules file after create: %+v, %v", rules, err)
	}

	e.mustRunCode(t, exitWait, "ip-rules", "create", "db", "--cidr", "2001:db8::/48", "--description", "v6 office")
	var list []ruleView
	e.mustJSON(t, &list, "ip-rules", "list", "db")
	if len(list) != 2 || list[0].ID != id || list[1].CIDR != "2001:db8::/48" {
		t.Errorf("ip-rules list --json = %+v", list)
	}
	text := e.mustRun(t, "ip-rules", "list", "db")
	if !strings.Contains(text, id) || !strings.Contains(text, "My Office IP") || !strings.HasPrefix(text, "id ") {
		t.Errorf("ip-rules list printed:\n%s", text)
	}

	var gone ruleView
	e.mustJSONCode(t, exitWait, &gone, "ip-rules", "delete", "db", "--id", id)
	if gone.ID != id {
		t.Errorf("ip-rules delete printed %+v, want rule %s", gone, id)
	}
	if code, _, stderr := e.run(t, "ip-rules", "get", "db", "--id", id); code != exitError || !strings.Contains(stderr, "no such IP rule") {
		t.Errorf("get of a deleted rule: exit %d, stderr %q", code, stderr)
	}
	e.mustJSON(t, &list, "ip-rules", "list", "db")
	if len(list) != 1 {
		t.Errorf("after delete the route has %d rules, want 1", len(list))
	}

	var actions []string
	for _, a := range e.auditLines(t) {
		if strings.HasPrefix(a.Action, "ip_rule.") {
			actions = append(actions, a.Action+" "+a.Route+" "+a.CIDR)
			if a.ID == "" || a.User == "" || a.Time.IsZero() {
				t.Errorf("audit line without id, user or time: %+v", a)
			}
		}
	}
	want := []string{"ip_rule.create db 1.2.3.4/32", "ip_rule.create db 2001:db8::/48", "ip_rule.delete db 1.2.3.4/32"}
	if strings.Join(actions, "\n") != strings.Join(want, "\n") {
		t.Errorf("audit log holds %q, want %q", actions, want)
	}
}

func TestIPRulesRefusals(t *testing.T) {
	e := newAdminEnv(t, "127.0.0.1:1", "127.0.0.1:1")
	e.mustRunCode(t, exitWait, "ip-rules", "create", "cache", "--cidr", "10.0.0.0/8", "--description", "a")
	e.mustRunCode(t, exitWait, "ip-rules", "create", "cache", "--cidr", "192.0.2.0/24", "--description", "b")
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr []string
	}{
		{"host bits", []string{"create", "db", "--cidr", "10.1.2.3/16", "--description", "x"}, exitError,
			[]string{"host bits set", "hint: did you mean --cidr 10.1.0.0/16?"}},
		{"bare address", []string{"create", "db", "--cidr", "10.1.2.3", "--description", "x"}, exitError,
			[]string{"no prefix length", "--cidr 10.1.2.3/32"}},
		{"not a block", []string{"create", "db", "--cidr", "office", "--description", "x"}, exitError, []string{`"office"`}},
		{"duplicate", []string{"create", "cache", "--cidr", "10.0.0.0/8", "--description", "again"}, exitError,
			[]string{"already allowed", "hint: see the rules with: spacegate ip-rules list cache"}},
		{"max_ip_rules", []string{"create", "cache", "--cidr", "172.16.0.0/12", "--description", "c"}, exitError,
			[]string{"already has 2 IP rules", "raise max_ip_rules"}},
		{"unknown route", []string{"create", "nope", "--cidr", "10.0.0.0/8", "--description", "x"}, exitError,
			[]string{`unknown route "nope"`, "db, cache"}},
		{"no cidr", []string{"create", "db", "--description", "x"}, exitUsage, []string{"needs --cidr"}},
		{"no description", []string{"create", "db", "--cidr", "10.0.0.0/8"}, exitUsage, []string{"needs --description"}},
		{"no route", []string{"list"}, exitUsage, []string{"takes one argument, ROUTE"}},
		{"get without id", []string{"get", "db"}, exitUsage, []string{"needs --id"}},
		{"delete unknown id", []string{"delete", "db", "--id", "38c466b6-dcfb-4869-b5ac-40420b786fb4"}, exitError, []string{"no such IP rule"}},
	}
	for _, tt := range tests {
		before := readFiles(t, e.path("rules"))
		code, stdout, stderr := e.run(t, append([]string{"ip-rules"}, tt.args...)...)
		if code != tt.code {
			t.Errorf("%s: exit %d, want %d\nstdout: %s\nstderr: %s", tt.name, code, tt.code, stdout, stderr)
		}
		for _, w := range tt.stderr {
			if !strings.Contains(stderr, w) {
				t.Errorf("%s: stderr %q does not contain %q", tt.name, stderr, w)
			}
		}
		if stdout != "" {
			t.Errorf("%s: a refusal printed to stdout: %q", tt.name, stdout)
		}
		after := readFiles(t, e.path("rules"))
		for name, data := range before {
			if !bytes.Equal(after[name], data) {
				t.Errorf("%s: a refused command changed rules/%s", tt.name, name)
			}
		}
	}
}

func TestGroupCommands(t *testing.T) {
	for _, group := range []string{"ca", "certs", "ip-rules"} {
		if code, stdout, _ := runCLI(t, group); code != exitOK || !strings.Contains(stdout, "Available Commands") {
			t.Errorf("spacegate %s alone: exit %d, want 0 and its help:\n%s", group, code, stdout)
		}
		if code, _, stderr := runCLI(t, group, "frob"); code != exitUsage || !strings.Contains(stderr, `unknown command "frob"`) {
			t.Errorf("spacegate %s frob: exit %d, stderr %q; want 2 naming the command", group, code, stderr)
		}
	}
}

// TestIPRulesParallelCreate runs 50 `ip-rules create` processes at once:
// the lock must serialise them so that no rule is lost.
func TestIPRulesParallelCreate(t *testing.T) {
	bin := needBinary(t)
	e := newAdminEnv(t, "127.0.0.1:1", "127.0.0.1:1")
	const n = 50
	var wg sync.WaitGroup
	errs := make([]string, n)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := range n {
		wg.Go(func() {
			cmd := exec.CommandContext(ctx, bin, "ip-rules", "create", "db", "--config", e.config,
				"--cidr", fmt.Sprintf("10.%d.0.0/16", i), "--description", fmt.Sprintf("rule %d", i))
			// No gate runs to confirm: each create exits 3.
			if out, err := cmd.CombinedOutput(); cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != exitWait {
				errs[i] = fmt.Sprintf("create %d: %v, want exit 3\n%s", i, err, out)
			}
		})
	}
	wg.Wait()
	for _, e := range errs {
		if e != "" {
			t.Error(e)
		}
	}
	rules, err := allowlist.Load(e.path("rules", "db.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(rules.Rules) != n {
		t.Errorf("after %d parallel creates the rules file holds %d rules", n, len(rules.Rules))
	}
	creates := 0
	for _, a := range e.auditLines(t) {
		if a.Action == "ip_rule.create" {
			creates++
		}
	}
	if creates != n {
		t.Errorf("audit log holds %d ip_rule.create lines, want %d", creates, n)
	}
	if matches, _ := filepath.Glob(e.path("rules", ".*.tmp*")); len(matches) > 0 {
		t.Errorf("temporary files left behind: %v", matches)
	}
}

// TestIPRulesCreateWholeFamily: a block that admits a whole address family
// is created with a warning (stderr; a field with --json), and `check`
// warns of it without failing.
func TestIPRulesCreateWholeFamily(t *testing.T) {
	e := newAdminEnv(t, "127.0.0.1:1", "127.0.0.1:1")
	for _, tc := range []struct{ cidr, want string }{
		{"0.0.0.0/0", "warning: 0.0.0.0/0 admits every IPv4 address: only the client certificate keeps strangers out of route db\n"},
		{"::ffff:0.0.0.0/96", ""}, // the same block as 0.0.0.0/0: refused as a duplicate
		{"::/0", "warning: ::/0 admits every IPv6 address"},
		{"10.0.0.0/8", ""},
	} {
		code, stdout, stderr := e.run(t, "ip-rules", "create", "db", "--cidr", tc.cidr, "--description", "everyone")
		switch {
		case tc.cidr == "::ffff:0.0.0.0/96":
			if code == exitOK || !strings.Contains(stderr, "0.0.0.0/0") {
				t.Errorf("create %s after 0.0.0.0/0: exit %d, stderr %q; want a duplicate", tc.cidr, code, stderr)
			}
		case code != exitWait || !strings.Contains(stdout, "cidr: ") || strings.Contains(stdout, "warning"):
			t.Errorf("create %s: exit %d\nstdout: %s\nstderr: %s", tc.cidr, code, stdout, stderr)
		case tc.want == "" && strings.Contains(stderr, "warning"), tc.want != "" && !strings.HasPrefix(stderr, tc.want):
			t.Errorf("create %s: stderr %q, want %q", tc.cidr, stderr, tc.want)
		}
	}

	var v ruleView
	e.mustJSONCode(t, exitWait, &v, "ip-rules", "create", "cache", "--cidr", "::ffff:0.0.0.0/96", "--description", "all of IPv4")
	if want := "::ffff:0.0.0.0/96 (the IPv4 block 0.0.0.0/0) admits every IPv4 address: only the client certificate keeps strangers out of route cache"; v.CIDR != "0.0.0.0/0" || v.Warning != want {
		t.Errorf("create --json: cidr %s, warning %q; want %q", v.CIDR, v.Warning, want)
	}

	code, stdout, stderr := e.run(t, "check")
	if code != exitOK || !strings.Contains(stdout, "OK\n") ||
		!strings.Contains(stdout, "warning: route db: "+e.path("rules", "db.yaml")+": the rule at line ") ||
		!strings.Contains(stdout, "(0.0.0.0/0, id ") || !strings.Contains(stdout, "admits every IPv6 address") ||
		!strings.Contains(stdout, "warning: route cache: ") {
		t.Errorf("check: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	var res checkResult
	e.mustJSON(t, &res, "check")
	if !res.OK || len(res.Warnings) != 3 {
		t.Errorf("check --json: %+v, want OK with 3 warnings", res)
	}
}
