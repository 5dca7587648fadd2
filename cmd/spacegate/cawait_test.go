package main

import (
	"testing"

	"github.com/spacegate/spacegate/admin"
)

// TestServesBundle: a replica trusts the bundle when each route that
// trusts any of its CAs trusts exactly them; routes on another bundle are
// ignored, and a replica with none on it does not count.
func TestServesBundle(t *testing.T) {
	bundle := []string{"new", "old"}
	replica := func(routes ...[]string) admin.Replica {
		r := admin.Replica{Reachable: true, Routes: map[string]admin.ReplicaRoute{}}
		for i, fps := range routes {
			r.Routes[string(rune('a'+i))] = admin.ReplicaRoute{CAFingerprints: fps}
		}
		return r
	}
	for _, tt := range []struct {
		name string
		r    admin.Replica
		want bool
	}{
		{"every route on the bundle", replica([]string{"old", "new"}, []string{"new", "old"}), true},
		{"a route on another bundle is ignored", replica([]string{"new", "old"}, []string{"corp"}), true},
		{"stale: the old bundle", replica([]string{"old"}, []string{"new", "old"}), false},
		{"not pruned yet: a CA beyond the bundle", replica([]string{"new", "old", "gone"}), false},
		{"no route on the bundle", replica([]string{"corp"}), false},
		{"no route at all", replica(), false},
	} {
		if got := servesBundle(tt.r, bundle); got != tt.want {
			t.Errorf("%s: servesBundle = %v, want %v", tt.name, got, tt.want)
		}
	}
}
