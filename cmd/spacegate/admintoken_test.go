package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// withAdminToken adds admin.token_file to the env's config and writes the
// token there, 0600.
func (e *adminEnv) withAdminToken(t *testing.T, token string) string {
	t.Helper()
	file := e.path("admin.token")
	if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(data), "listen: "+e.admin+"\n", "listen: "+e.admin+"\n  token_file: admin.token\n", 1)
	writeFile(t, e.config, text)
	return file
}

// TestStatusAdminToken runs `spacegate status` and `ip-rules list`
// against a gate whose admin endpoint wants a token: from the config, the
// flag or the environment it gets in; without it, or with another, the
// user is told to pass it.
func TestStatusAdminToken(t *testing.T) {
	e := newAdminEnv(t, "127.0.0.1:1", "127.0.0.1:1")
	tokenFile := e.withAdminToken(t, "the-admin-token-0123456789")
	startGate(t, e.config)
	e.mustRun(t, "ip-rules", "create", "db", "--cidr", "192.0.2.0/24", "--description", "office")

	wrong := e.path("wrong.token")
	if err := os.WriteFile(wrong, []byte("another-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	loose := e.path("loose.token")
	if err := os.WriteFile(loose, []byte("the-admin-token-0123456789\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(loose, 0o644); err != nil {
		t.Fatal(err)
	}
	url := "http://" + e.admin
	for _, tc := range []struct {
		name   string
		args   []string
		env    string   // SPACEGATE_ADMIN_TOKEN_FILE
		stderr []string // nil: the command succeeds
	}{
		{"token of the config", []string{"status", "--config", e.config}, "", nil},
		{"flag", []string{"status", "--admin", url, "--admin-token-file", tokenFile}, "", nil},
		{"environment", []string{"status", "--admin", url}, tokenFile, nil},
		{"flag over the environment", []string{"status", "--admin", url, "--admin-token-file", tokenFile}, wrong, nil},
		{"no token", []string{"status", "--admin", url}, "", []string{
			"spacegate: " + url + "/v1/status: 401 Unauthorized: the gate's admin endpoint wants its token\n",
			"hint: pass the file of the gate's admin.token_file with --admin-token-file FILE or $SPACEGATE_ADMIN_TOKEN_FILE\n"}},
		{"wrong token", []string{"status", "--config", e.config, "--admin-token-file", wrong}, "", []string{
			"the gate refused the admin token of " + wrong, "hint: is " + wrong + " the file of the gate's admin.token_file"}},
		{"token file readable by all", []string{"status", "--admin", url, "--admin-token-file", loose}, "", []string{
			"admin token: " + loose + " has permissions 0644"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(adminTokenEnv, tc.env)
			code, stdout, stderr := runCLI(t, tc.args...)
			if tc.stderr == nil {
				if code != exitOK || !strings.Contains(stdout, "ready yes") {
					t.Fatalf("exit %d, want 0 and the gate's status\nstdout: %s\nstderr: %s", code, stdout, stderr)
				}
				return
			}
			if code != exitError {
				t.Errorf("exit %d, want %d", code, exitError)
			}
			for _, w := range tc.stderr {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if n := strings.Count(stderr, "\n"); n != 2 {
				t.Errorf("stderr has %d lines, want the error and its hint:\n%s", n, stderr)
			}
		})
	}

	t.Run("ip-rules", func(t *testing.T) {
		var list []ruleView
		e.mustJSON(t, &list, "ip-rules", "list", "db")
		if len(list) != 1 || list[0].Status != ruleAuthorized {
			t.Errorf("with the config's token: %+v, want the rule %s", list, ruleAuthorized)
		}
		e.mustJSON(t, &list, "ip-rules", "list", "db", "--admin-token-file", wrong)
		if len(list) != 1 || list[0].Status != ruleNoToken {
			t.Errorf("with another token: %+v, want the rule %q", list, ruleNoToken)
		}
		// A token file that cannot be used stops the command before it
		// changes the rules.
		code, _, stderr := e.run(t, "ip-rules", "create", "db", "--cidr", "198.51.100.0/24", "--description", "x", "--admin-token-file", loose)
		if code != exitError || !strings.Contains(stderr, "has permissions 0644") {
			t.Errorf("create with a loose token file: exit %d, stderr %s", code, stderr)
		}
		e.mustJSON(t, &list, "ip-rules", "list", "db")
		if len(list) != 1 {
			t.Errorf("the refused create wrote a rule: %+v", list)
		}
	})
}

// TestCheckAdminNeedsToken: `check` and `serve` refuse an admin endpoint
// on an address other than loopback without admin.token_file, naming the
// line; with one, check passes; a token file others can read fails.
func TestCheckAdminNeedsToken(t *testing.T) {
	dir, _ := makeQuickstart(t)
	config := filepath.Join(dir, "spacegate.yaml")
	data, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	public := strings.Replace(string(data), "listen: "+qsAdminListen, "listen: 0.0.0.0:9187", 1)
	writeFile(t, config, public)

	code, stdout, stderr := runCLI(t, "check", "--config", config)
	want := config + ":3: admin.listen 0.0.0.0:9187 is not a loopback address"
	if code != exitError || !strings.Contains(stdout+stderr, want) {
		t.Errorf("check: exit %d, want 1 and %q\nstdout: %s\nstderr: %s", code, want, stdout, stderr)
	}

	// serve refuses the same config before it listens anywhere.
	code, _, stderr = runCLIWithin(t, 15*time.Second, "serve", "--config", config)
	if code != exitError || !strings.Contains(stderr, want) {
		t.Errorf("serve: exit %d, want 1 and %q\nstderr: %s", code, want, stderr)
	}

	token := filepath.Join(dir, "admin.token")
	writeFile(t, token, "0123456789abcdef\n")
	if err := os.Chmod(token, 0o600); err != nil {
		t.Fatal(err)
	}
	writeFile(t, config, strings.Replace(public, "listen: 0.0.0.0:9187\n", "listen: 0.0.0.0:9187\n  token_file: admin.token\n", 1))
	if code, stdout, stderr := runCLI(t, "check", "--config", config); code != exitOK {
		t.Errorf("check with a token: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	if err := os.Chmod(token, 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = runCLI(t, "check", "--config", config)
	want = config + ":4: admin.token_file: " + token + " has permissions 0644"
	if code != exitError || !strings.Contains(stdout+stderr, want) {
		t.Errorf("check with a loose token file: exit %d, want 1 and %q\nstdout: %s\nstderr: %s", code, want, stdout, stderr)
	}

	// A FIFO in its place, with no writer, is refused at once.
	if err := os.Remove(token); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(token, 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = runCLIWithin(t, 15*time.Second, "check", "--config", config)
	want = config + ":4: admin.token_file: admin token file " + token + " is a FIFO (named pipe), not a regular file"
	if code != exitError || !strings.Contains(stdout+stderr, want) {
		t.Errorf("check with a FIFO token file: exit %d, want 1 and %q\nstdout: %s\nstderr: %s", code, want, stdout, stderr)
	}
}
