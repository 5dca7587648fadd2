package allowlist

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/spacegate/spacegate/internal/atomicfile"
)

// DefaultMaxRules is the number of rules a [Store] allows when its MaxRules
// is zero: the managed platform's cap of 60 blocks per database.
const DefaultMaxRules = 60

// Errors of [Store], wrapped with context. Test for them with [errors.Is].
// (They sit here rather than in errors.go because they belong to the store
// alone.)
var (
	// ErrRuleNotFound means no rule of the file has the id asked for.
	ErrRuleNotFound = errors.New("no such IP rule")

	// ErrDuplicateCIDR means a rule for the same block already exists.
	ErrDuplicateCIDR = errors.New("block already allowed")

	// ErrTooManyRules means the file already holds the most rules allowed.
	ErrTooManyRules = errors.New("too many IP rules")
)

// Store is one rules file that commands change while a running gate may be
// reading it. Every change is a locked read-modify-write: it takes an
// exclusive lock on a lock file beside the rules file (".NAME.lock"), reads
// the file, changes it, and writes it back atomically (temporary file and
// rename in the same directory). So the gate, which reads the file without
// the lock, sees either the old rules or the new ones, and concurrent
// commands, in this process or others, never lose each other's changes.
//
// A Store holds no open files and no cached rules; its methods are safe for
// concurrent use as long as its fields are not changed.
type Store struct {
	// Path is the rules file.
	Path string

	// Route is the name of the route the file belongs to. Create derives
	// a new rule's id from it and the block (see RuleID), so that the same
	// block on the same route gets the same id on every host.
	Route string

	// MaxRules is the most rules the file may hold; Create refuses a rule
	// beyond it. Zero means DefaultMaxRules.
	MaxRules int

	// Now returns the time written as created_at and updated_at. If nil,
	// time.Now is used. Times are written in UTC, to the second.
	Now func() time.Time
}

func (s *Store) lockPath() string {
	return filepath.Join(filepath.Dir(s.Path), "."+filepath.Base(s.Path)+".lock")
}

func (s *Store) now() time.Time {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	return now().UTC().Truncate(time.Second)
}

func (s *Store) maxRules() int {
	if s.MaxRules > 0 {
		return s.MaxRules
	}
	return DefaultMaxRules
}

// Load reads the rules file as [Load] does. It takes no lock: writes are
// atomic, so what it reads is always a whole file.
func (s *Store) Load() (*Rules, error) {
	return Load(s.Path)
}

// Get returns the rule with the given id (case-insensitive), or an error
// wrapping [ErrRuleNotFound].
func (s *Store) Get(id string) (Rule, error) {
	rules, err := s.Load()
	if err != nil {
		return Rule{}, err
	}
	if i := rules.index(id); i >= 0 {
		return rules.Rules[i], nil
	}
	return Rule{}, fmt.Errorf("rule %s in %s: %w", id, s.Path, ErrRuleNotFound)
}

// Update changes the rules file under the lock: it reads the file (a
// missing file reads as no rules), calls fn, validates the result and
// writes it back atomically with mode 0644. If fn returns an error, the file
// is left as it was and Update returns that error. The lock wait ends with
// ctx; without a deadline on ctx it ends after
// [atomicfile.DefaultLockTimeout].
func (s *Store) Update(ctx context.Context, fn func(*Rules) error) error {
	unlock, err := atomicfile.Lock(ctx, s.lockPath())
	if err != nil {
		return err
	}
	defer unlock()
	rules, err := Load(s.Path)
	if errors.Is(err, fs.ErrNotExist) {
		rules, err = &Rules{}, nil
	}
	if err != nil {
		return err
	}
	if err := fn(rules); err != nil {
		return err
	}
	data, err := rules.Marshal()
	if err != nil {
		return fmt.Errorf("rules file %s: %w", s.Path, err)
	}
	return atomicfile.WriteFile(s.Path, data, 0o644)
}

// Create adds a rule for cidr with the id RuleID(s.Route, cidr) and
// returns it. cidr
// must be normalised, as [ParseCIDR] returns it. Create refuses, with an
// error wrapping [ErrDuplicateCIDR], a block that another rule already has,
// and, wrapping [ErrTooManyRules], a rule beyond MaxRules. A missing rules
// file is created (its directory must exist).
func (s *Store) Create(ctx context.Context, cidr netip.Prefix, description string) (Rule, error) {
	if !cidr.IsValid() {
		return Rule{}, errors.New("creating rule: " + msgMissingCIDR)
	}
	if n := normalize(cidr); n != cidr {
		return Rule{}, fmt.Errorf("creating rule: cidr %s is not normalised; did you mean %s?", cidr, n)
	}
	now := s.now()
	rule := Rule{ID: RuleID(s.Route, cidr), CIDR: cidr, Description: description, CreatedAt: now, UpdatedAt: now}
	err := s.Update(ctx, func(r *Rules) error {
		for _, old := range r.Rules {
			if old.CIDR == cidr {
				return fmt.Errorf("cidr %s is already allowed by rule %s%s: %w", cidr, old.ID, describeRule(old), ErrDuplicateCIDR)
			}
		}
		if limit := s.maxRules(); len(r.Rules) >= limit {
			return fmt.Errorf("%s already holds %d rules, the most allowed is %d: %w", s.Path, len(r.Rules), limit, ErrTooManyRules)
		}
		r.Rules = append(r.Rules, rule)
		return nil
	})
	if err != nil {
		return Rule{}, err
	}
	return rule, nil
}

// RuleID returns the id of a rule for cidr on route: a name-based UUID
// (version 5, RFC 9562) of the route's name and the normalised block. It
// is the same on every host, so that a rule made on one replica's copy
// of a rules file can be looked up by id on any other; rules files keep
// whatever UUIDs they hold, and a rule made by hand may have any.
func RuleID(route string, cidr netip.Prefix) string {
	// The namespace is the name-based UUID of "https://spacegate.dev/ip-rule"
	// in the URL namespace.
	space := uuid.NewSHA1(uuid.NameSpaceURL, []byte("https://spacegate.dev/ip-rule"))
	return uuid.NewSHA1(space, []byte(route+"\x00"+normalize(cidr).String())).String()
}

// Delete removes the rule with the given id (case-insensitive) and returns
// it, or returns an error wrapping [ErrRuleNotFound].
func (s *Store) Delete(ctx context.Context, id string) (Rule, error) {
	var gone Rule
	err := s.Update(ctx, func(r *Rules) error {
		i := r.index(id)
		if i < 0 {
			return fmt.Errorf("rule %s in %s: %w", id, s.Path, ErrRuleNotFound)
		}
		gone = r.Rules[i]
		r.Rules = append(r.Rules[:i], r.Rules[i+1:]...)
		return nil
	})
	if err != nil {
		return Rule{}, err
	}
	return gone, nil
}

// index returns the position of the rule with id, or -1.
func (r *Rules) index(id string) int {
	for i, rule := range r.Rules {
		if strings.EqualFold(rule.ID, id) {
			return i
		}
	}
	return -1
}

// describeRule returns " (description)" or "" for a rule without one.
func describeRule(r Rule) string {
	if r.Description == "" {
		return ""
	}
	return fmt.Sprintf(" (%q)", r.Description)
}
