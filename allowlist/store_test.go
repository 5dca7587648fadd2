package allowlist

import (
	"context"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func newTestStore(t *testing.T, max int) *Store {
	t.Helper()
	now := time.Date(2019, 7, 17, 0, 5, 52, 123, time.UTC)
	return &Store{Path: filepath.Join(t.TempDir(), "rules.yaml"), MaxRules: max, Now: func() time.Time { return now }}
}

func TestStoreCreate(t *testing.T) {
	s := newTestStore(t, 3)
	ctx := context.Background()
	r, err := s.Create(ctx, netip.MustParsePrefix("1.2.3.4/32"), "My Office IP")
	if err != nil {
		t.Fatalf("Create in a missing file: %v", err)
	}
	want := time.Date(2019, 7, 17, 0, 5, 52, 0, time.UTC)
	if !isUUID(r.ID) || r.CIDR != netip.MustParsePrefix("1.2.3.4/32") || r.Description != "My Office IP" ||
		!r.CreatedAt.Equal(want) || !r.UpdatedAt.Equal(want) {
		t.Errorf("Create returned %+v", r)
	}
	got, err := s.Get(strings.ToUpper(r.ID))
	if err != nil {
		t.Fatalf("Get of the new rule by its upper-case id: %v", err)
	}
	if got.ID != r.ID || got.CIDR != r.CIDR || got.Description != r.Description || !got.CreatedAt.Equal(want) {
		t.Errorf("Get = %+v, want %+v", got, r)
	}

	tests := []struct {
		name    string
		cidr    string
		wantErr error  // nil: must succeed
		wantMsg string // in the error
	}{
		{"second block", "10.0.0.0/8", nil, ""},
		{"duplicate", "1.2.3.4/32", ErrDuplicateCIDR, r.ID},
		{"third block", "2001:db8::/32", nil, ""},
		{"over the limit", "192.0.2.0/24", ErrTooManyRules, "most allowed is 3"},
	}
	for _, tt := range tests {
		_, err := s.Create(ctx, netip.MustParsePrefix(tt.cidr), tt.name)
		if tt.wantErr == nil && err != nil {
			t.Errorf("%s: Create(%s): %v", tt.name, tt.cidr, err)
		}
		if tt.wantErr != nil && (!errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantMsg)) {
			t.Errorf("%s: Create(%s) = %v, want %v naming %q", tt.name, tt.cidr, err, tt.wantErr, tt.wantMsg)
		}
	}
	rules, err := Load(s.Path)
	if err != nil {
		t.Fatalf("the written file does not load: %v", err)
	}
	if got, want := rules.Prefixes(), pp("1.2.3.4/32", "10.0.0.0/8", "2001:db8::/32"); !slices.Equal(got, want) {
		t.Errorf("file holds %v, want %v", got, want)
	}
}

func TestStoreCreateRefusesUnnormalised(t *testing.T) {
	s := newTestStore(t, 0)
	for _, p := range []netip.Prefix{{}, netip.MustParsePrefix("10.0.0.1/8"), netip.MustParsePrefix("::ffff:10.0.0.0/104")} {
		if _, err := s.Create(context.Background(), p, ""); err == nil {
			t.Errorf("Create(%v) succeeded, want an error", p)
		}
	}
	if _, err := os.Stat(s.Path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a refused Create wrote the file: %v", err)
	}
}

func TestStoreDelete(t *testing.T) {
	s := newTestStore(t, 0)
	ctx := context.Background()
	a, _ := s.Create(ctx, netip.MustParsePrefix("10.0.0.0/8"), "a")
	b, _ := s.Create(ctx, netip.MustParsePrefix("10.1.0.0/16"), "b")
	gone, err := s.Delete(ctx, a.ID)
	if err != nil || gone.ID != a.ID {
		t.Fatalf("Delete(%s) = %+v, %v", a.ID, gone, err)
	}
	if _, err := s.Delete(ctx, a.ID); !errors.Is(err, ErrRuleNotFound) {
		t.Errorf("second Delete(%s) = %v, want ErrRuleNotFound", a.ID, err)
	}
	if _, err := s.Get(a.ID); !errors.Is(err, ErrRuleNotFound) {
		t.Errorf("Get of a deleted rule = %v, want ErrRuleNotFound", err)
	}
	rules, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(rules.Rules) != 1 || rules.Rules[0].ID != b.ID {
		t.Errorf("after delete the file holds %+v, want only %s", rules.Rules, b.ID)
	}
}

func TestStoreUpdateErrorKeepsFile(t *testing.T) {
	s := newTestStore(t, 0)
	ctx := context.Background()
	if _, err := s.Create(ctx, netip.MustParsePrefix("10.0.0.0/8"), "a"); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(s.Path)
	boom := errors.New("boom")
	if err := s.Update(ctx, func(r *Rules) error { r.Rules = nil; return boom }); !errors.Is(err, boom) {
		t.Errorf("Update = %v, want the error of fn", err)
	}
	// A change that makes the rules invalid is refused too.
	if err := s.Update(ctx, func(r *Rules) error { r.Rules = append(r.Rules, r.Rules[0]); return nil }); err == nil {
		t.Errorf("Update that duplicates a rule succeeded")
	}
	if after, _ := os.ReadFile(s.Path); string(after) != string(before) {
		t.Errorf("failed updates changed the file:\n%s", after)
	}
}

func TestStoreBrokenFile(t *testing.T) {
	s := newTestStore(t, 0)
	if err := os.WriteFile(s.Path, []byte("rules: [oops\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(context.Background(), netip.MustParsePrefix("10.0.0.0/8"), ""); err == nil || !strings.Contains(err.Error(), s.Path) {
		t.Errorf("Create on a broken file = %v, want an error naming the file", err)
	}
	if data, _ := os.ReadFile(s.Path); string(data) != "rules: [oops\n" {
		t.Errorf("Create replaced a broken file it could not read: %q", data)
	}
}

// TestStoreConcurrentCreate creates rules from many goroutines, each with
// its own Store value as separate commands would have: none may be lost.
func TestStoreConcurrentCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			s := &Store{Path: path, MaxRules: n}
			_, err := s.Create(context.Background(), netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i), 0}), 24), "")
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	rules, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(rules.Rules) != n {
		t.Errorf("after %d concurrent creates the file holds %d rules", n, len(rules.Rules))
	}
}

// TestRuleIDFromContent: the same block on the same route gets the same
// id in any file on any host; another route or block another id.
func TestRuleIDFromContent(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	a := &Store{Path: filepath.Join(dir, "a.yaml"), Route: "db"}
	b := &Store{Path: filepath.Join(dir, "b.yaml"), Route: "db"}
	c := &Store{Path: filepath.Join(dir, "c.yaml"), Route: "cache"}
	ra, err := a.Create(ctx, netip.MustParsePrefix("10.1.0.0/16"), "office")
	if err != nil {
		t.Fatal(err)
	}
	rb, err := b.Create(ctx, netip.MustParsePrefix("10.1.0.0/16"), "the same office, described otherwise")
	if err != nil {
		t.Fatal(err)
	}
	rc, err := c.Create(ctx, netip.MustParsePrefix("10.1.0.0/16"), "office")
	if err != nil {
		t.Fatal(err)
	}
	if ra.ID != rb.ID || ra.ID == rc.ID || !isUUID(ra.ID) {
		t.Errorf("ids: db %s, db again %s, cache %s; want the first two equal, the third not", ra.ID, rb.ID, rc.ID)
	}
	if RuleID("db", netip.MustParsePrefix("10.2.0.0/16")) == ra.ID || RuleID("db", netip.MustParsePrefix("10.1.0.0/16")) != ra.ID {
		t.Errorf("RuleID does not follow the block")
	}
	if got := RuleID("db", netip.MustParsePrefix("::ffff:10.1.0.0/112")); got != ra.ID {
		t.Errorf("an IPv4-mapped block: %s, want the id of its IPv4 block %s", got, ra.ID)
	}
	// A file's existing ids, random UUIDs, stay valid.
	if err := os.WriteFile(filepath.Join(dir, "old.yaml"), []byte("rules:\n  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4\n    cidr: 10.9.0.0/16\n    description: old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := &Store{Path: filepath.Join(dir, "old.yaml"), Route: "db"}
	if r, err := old.Get("38c466b6-dcfb-4869-b5ac-40420b786fb4"); err != nil || r.CIDR != netip.MustParsePrefix("10.9.0.0/16") {
		t.Errorf("old id: %+v, %v", r, err)
	}
}
