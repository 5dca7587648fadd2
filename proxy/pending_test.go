package proxy

import (
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// TestPendingPoolEvictsLeastProgress: a full pool, gate-wide or for one
// source, evicts the entry that has made the least progress, oldest first,
// and never more than it must.
func TestPendingPoolEvictsLeastProgress(t *testing.T) {
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	type step struct {
		name     string
		src      netip.Addr
		progress progress // advanced to after it is added
	}
	tests := []struct {
		name         string
		max, perSrc  int
		steps        []step
		newcomer     netip.Addr
		wantEvicted  []string
		wantPoolSize int
	}{
		{"room left", 3, 3, []step{{"a1", a, progressSilent}}, a, nil, 2},
		{"oldest silent goes first", 3, 3,
			[]step{{"a1", a, progressHello}, {"a2", a, progressSilent}, {"b1", b, progressSilent}}, b, []string{"a2"}, 3},
		{"then the least progressed", 3, 3,
			[]step{{"a1", a, progressChecking}, {"a2", a, progressHello}, {"b1", b, progressStarted}}, b, []string{"b1"}, 3},
		{"oldest among equals", 3, 3,
			[]step{{"a1", a, progressHello}, {"b1", b, progressHello}, {"a2", a, progressHello}}, b, []string{"a1"}, 3},
		{"a source evicts its own", 10, 2,
			[]step{{"b1", b, progressSilent}, {"a1", a, progressStarted}, {"a2", a, progressHello}}, a, []string{"a1"}, 3},
		{"both bounds at once", 3, 2,
			[]step{{"b1", b, progressSilent}, {"a1", a, progressStarted}, {"a2", a, progressHello}}, a, []string{"a1"}, 3},
		{"unknown source counts gate-wide only", 2, 1,
			[]step{{"x1", netip.Addr{}, progressSilent}, {"x2", netip.Addr{}, progressStarted}}, netip.Addr{}, []string{"x1"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var count atomic.Int64
			p := pendingPool{count: &count}
			names := map[*pendingEntry]string{}
			var evicted []string
			add := func(name string, src netip.Addr) *pendingEntry {
				e := &pendingEntry{key: src}
				names[e] = name
				victims, refused := p.add(e, tt.max, tt.perSrc, nil)
				if refused {
					t.Fatalf("%s refused without a screen", name)
				}
				for _, v := range victims {
					evicted = append(evicted, names[v])
					if !v.evicted.Load() || v.in {
						t.Errorf("victim %s: evicted %v, listed %v", names[v], v.evicted.Load(), v.in)
					}
				}
				return e
			}
			for _, s := range tt.steps {
				e := add(s.name, s.src)
				p.advance(e, s.progress)
			}
			if len(evicted) != 0 {
				t.Fatalf("evicted %v while filling", evicted)
			}
			add("new", tt.newcomer)
			if !slices.Equal(evicted, tt.wantEvicted) {
				t.Errorf("evicted %v, want %v", evicted, tt.wantEvicted)
			}
			if got := count.Load(); got != int64(tt.wantPoolSize) {
				t.Errorf("pool size %d, want %d", got, tt.wantPoolSize)
			}
			// Removing every entry empties the pool and its index.
			for e := range names {
				if got := p.remove(e); got != e.evicted.Load() {
					t.Errorf("remove(%s) = %v, want %v", names[e], got, e.evicted.Load())
				}
			}
			if count.Load() != 0 || len(p.bySrc) != 0 || p.lists.victim() != nil {
				t.Errorf("after removing all: size %d, %d sources, victim %v", count.Load(), len(p.bySrc), p.lists.victim())
			}
		})
	}
}

// TestPendingPoolScreen: under pressure (half full, gate-wide or for the
// source) a screened newcomer is not listed; when calm it is.
func TestPendingPoolScreen(t *testing.T) {
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	var count atomic.Int64
	p := pendingPool{count: &count}
	deny := func() bool { return true }
	if _, refused := p.add(&pendingEntry{key: a}, 10, 4, deny); refused {
		t.Fatal("screened in a calm pool")
	}
	if _, refused := p.add(&pendingEntry{key: a}, 10, 4, deny); refused {
		t.Fatal("screened with its source a quarter full")
	}
	if _, refused := p.add(&pendingEntry{key: a}, 10, 4, deny); !refused {
		t.Fatal("not screened with its source half full")
	}
	if _, refused := p.add(&pendingEntry{key: b}, 10, 4, deny); refused {
		t.Fatal("another source screened while the pool is calm")
	}
	for range 3 {
		p.add(&pendingEntry{key: b}, 10, 100, nil)
	}
	if _, refused := p.add(&pendingEntry{key: b}, 10, 100, deny); !refused {
		t.Fatal("not screened with the pool half full")
	}
	if _, refused := p.add(&pendingEntry{key: b}, 10, 100, func() bool { return false }); refused {
		t.Fatal("an allowed source screened")
	}
}

func TestSourceKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":          "192.0.2.1",
		"2001:db8:1:2:3::4":  "2001:db8:1:2::",
		"2001:db8:1:2:ff::9": "2001:db8:1:2::",
	} {
		if got := sourceKey(netip.MustParseAddr(in)); got.String() != want {
			t.Errorf("sourceKey(%s) = %s, want %s", in, got, want)
		}
	}
}

// BenchmarkPendingPool is the pool's cost per connection: listed at
// accept, advanced three times, removed at admission, with the pool full
// of idle entries so that each add also evicts.
func BenchmarkPendingPool(b *testing.B) {
	var count atomic.Int64
	p := pendingPool{count: &count}
	const max = 1000
	srcs := make([]netip.Addr, 64)
	for i := range srcs {
		srcs[i] = netip.AddrFrom4([4]byte{192, 0, 2, byte(i)})
	}
	for i := range max {
		p.add(&pendingEntry{key: srcs[i%len(srcs)]}, max, max, nil)
	}
	i := 0
	for b.Loop() {
		e := &pendingEntry{key: srcs[i%len(srcs)]}
		i++
		p.add(e, max, max, nil)
		p.advance(e, progressStarted)
		p.advance(e, progressHello)
		p.advance(e, progressChecking)
		p.remove(e)
	}
}

// TestPendingPoolSeesUnreadBytes: a connection whose client has sent bytes
// the gate has not read yet is not "silent": the next one goes first.
func TestPendingPoolSeesUnreadBytes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var count atomic.Int64
	p := pendingPool{count: &count}
	src := netip.MustParseAddr("127.0.0.1")
	var entries []*pendingEntry
	for i := range 3 {
		cc, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		sc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		if i == 0 {
			cc.Write(sslRequestPacket)
			waitFor(t, 5*time.Second, "the bytes to arrive", func() bool { return unreadBytes(sc) == len(sslRequestPacket) })
		}
		e := &pendingEntry{nc: sc, key: src}
		p.add(e, 10, 3, nil)
		entries = append(entries, e)
	}
	victims, _ := p.add(&pendingEntry{key: src}, 10, 3, nil)
	if len(victims) != 1 || victims[0] != entries[1] {
		t.Fatalf("evicted %v, want the second connection, the oldest with nothing sent", victims)
	}
	if entries[0].progress != progressNegotiated {
		t.Errorf("the first connection's progress is %d, want negotiated (a whole SSLRequest waits)", entries[0].progress)
	}
}

// at counts the entries of the pool at progress pr.
func (p *pendingPool) at(pr progress) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for e := p.lists[pr].head; e != nil; e = e.links[poolList].next {
		n++
	}
	return n
}
