package proxy

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The pending pool holds the connections accepted but not yet admitted or
// refused. It is bounded gate-wide (limits.max_pending) and per source
// (limits.max_pending_per_source). When a bound is reached the newcomer is
// not refused: the pending connection that has made the least progress is
// evicted instead, the one that has sent nothing first, oldest first. A
// real client sends its SSLRequest or ClientHello within milliseconds of
// its connect, so idle and trickling sockets go before it, whoever holds
// them and from whichever address.

// progress is how far a pending connection has come. It only grows.
type progress uint8

const (
	progressSilent     progress = iota // accepted; nothing read yet
	progressStarted                    // its first byte arrived
	progressNegotiated                 // a whole PostgreSQL start-up packet (SSLRequest) arrived
	progressHello                      // a whole TLS ClientHello arrived
	progressChecking                   // handshake done: checks run, or a refusal is told
	numProgress
)

// Lists an entry is on: the pool's, and its source's.
const (
	poolList = iota
	sourceList
)

// pendingEntry is one connection of the pool. Its fields other than
// evicted and nc are guarded by the pool's mutex.
type pendingEntry struct {
	nc       net.Conn
	key      netip.Addr // per-source key; invalid until known (behind a trusted proxy)
	progress progress
	redis    bool // a Redis listener: an evicted silent client is told why
	in       bool // on the pool's lists
	src      *sourcePending
	links    [2]struct{ prev, next *pendingEntry }
	evicted  atomic.Bool
}

// pendingList is a FIFO of entries, linked through links[which].
type pendingList struct{ head, tail *pendingEntry }

func (l *pendingList) push(e *pendingEntry, which int) {
	e.links[which].prev, e.links[which].next = l.tail, nil
	if l.tail != nil {
		l.tail.links[which].next = e
	} else {
		l.head = e
	}
	l.tail = e
}

func (l *pendingList) remove(e *pendingEntry, which int) {
	lk := &e.links[which]
	if lk.prev != nil {
		lk.prev.links[which].next = lk.next
	} else {
		l.head = lk.next
	}
	if lk.next != nil {
		lk.next.links[which].prev = lk.prev
	} else {
		l.tail = lk.prev
	}
	lk.prev, lk.next = nil, nil
}

// byProgress keeps one FIFO per progress level; the victim is the head of
// the lowest non-empty level, so choosing one costs numProgress steps.
type byProgress [numProgress]pendingList

func (b *byProgress) victim() *pendingEntry {
	for i := range b {
		if b[i].head != nil {
			return b[i].head
		}
	}
	return nil
}

type sourcePending struct {
	n     int
	lists byProgress
}

// pendingPool is the set of pending connections. Every operation takes one
// mutex for a few pointer moves; none scans the pool.
type pendingPool struct {
	mu    sync.Mutex
	n     int
	lists byProgress
	bySrc map[netip.Addr]*sourcePending
	count *atomic.Int64 // mirrors n for readers without the lock
}

// sourceKey is the per-source key of addr: the address, or its /64 for
// IPv6, where one host commonly holds a whole /64.
func sourceKey(addr netip.Addr) netip.Addr {
	if addr.Is6() && !addr.Is4In6() {
		p, _ := addr.Prefix(64)
		return p.Addr()
	}
	return addr
}

// add lists e, a newly accepted connection, evicting whatever the bounds
// require. If screen is set and the pool is under pressure (half full,
// gate-wide or for e's source) and screen says so, e is not listed and add
// reports refused. Victims are returned for the caller to close outside
// the lock.
func (p *pendingPool) add(e *pendingEntry, max, maxPerSource int, screen func() bool) (victims []*pendingEntry, refused bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bySrc == nil {
		p.bySrc = map[netip.Addr]*sourcePending{}
	}
	var sp *sourcePending
	if e.key.IsValid() {
		sp = p.bySrc[e.key]
	}
	if screen != nil && (2*p.n >= max || (sp != nil && 2*sp.n >= maxPerSource)) && screen() {
		return nil, true
	}
	if e.key.IsValid() {
		if sp == nil {
			sp = &sourcePending{}
			p.bySrc[e.key] = sp
		}
		if sp.n >= maxPerSource {
			victims = append(victims, p.evictLocked(p.victimLocked(&sp.lists)))
		}
	}
	if p.n >= max {
		victims = append(victims, p.evictLocked(p.victimLocked(&p.lists)))
	}
	e.in, e.src, e.progress = true, sp, progressSilent
	p.lists[progressSilent].push(e, poolList)
	if sp != nil {
		sp.lists[progressSilent].push(e, sourceList)
		sp.n++
	}
	p.n++
	p.count.Store(int64(p.n))
	return victims, false
}

// maxPeek bounds the sockets one eviction looks into.
const maxPeek = 8

// victimLocked returns the entry of b to evict. A silent candidate whose
// client has sent bytes the gate has not read yet (its goroutine has not
// run since, on a loaded machine) has progressed: it is moved up first, to
// negotiated if a whole first packet may be there (8 bytes: an SSLRequest;
// a ClientHello is longer), so that a real client is not evicted for the
// gate's own delay.
func (p *pendingPool) victimLocked(b *byProgress) *pendingEntry {
	for range maxPeek {
		e := b[progressSilent].head
		if e == nil {
			break
		}
		n := unreadBytes(e.nc)
		if n == 0 {
			break
		}
		p.advanceLocked(e, progressStarted)
		if n >= 8 {
			p.advanceLocked(e, progressNegotiated)
		}
	}
	return b.victim()
}

// advance records that e has come to level pr.
func (p *pendingPool) advance(e *pendingEntry, pr progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.advanceLocked(e, pr)
}

func (p *pendingPool) advanceLocked(e *pendingEntry, pr progress) {
	if !e.in || pr <= e.progress {
		return
	}
	p.lists[e.progress].remove(e, poolList)
	p.lists[pr].push(e, poolList)
	if e.src != nil {
		e.src.lists[e.progress].remove(e, sourceList)
		e.src.lists[pr].push(e, sourceList)
	}
	e.progress = pr
}

// setSource gives e, accepted from a trusted proxy, the source its PROXY
// header names, and applies that source's bound.
func (p *pendingPool) setSource(e *pendingEntry, src netip.Addr, maxPerSource int) []*pendingEntry {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !e.in || e.src != nil {
		return nil
	}
	e.key = sourceKey(src)
	sp := p.bySrc[e.key]
	if sp == nil {
		sp = &sourcePending{}
		p.bySrc[e.key] = sp
	}
	var victims []*pendingEntry
	if sp.n >= maxPerSource {
		victims = append(victims, p.evictLocked(p.victimLocked(&sp.lists)))
	}
	e.src = sp
	sp.lists[e.progress].push(e, sourceList)
	sp.n++
	return victims
}

// remove takes e off the pool, and reports whether it had been evicted.
func (p *pendingPool) remove(e *pendingEntry) (evicted bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e.in {
		p.unlinkLocked(e)
	}
	return e.evicted.Load()
}

func (p *pendingPool) evictLocked(e *pendingEntry) *pendingEntry {
	e.evicted.Store(true)
	p.unlinkLocked(e)
	return e
}

func (p *pendingPool) unlinkLocked(e *pendingEntry) {
	p.lists[e.progress].remove(e, poolList)
	if sp := e.src; sp != nil {
		sp.lists[e.progress].remove(e, sourceList)
		if sp.n--; sp.n == 0 {
			delete(p.bySrc, e.key)
		}
	}
	e.in, e.src = false, nil
	p.n--
	p.count.Store(int64(p.n))
}

// pressure reports whether the pool is half full or more.
func (p *pendingPool) pressure(max int) bool { return 2*p.count.Load() >= int64(max) }

// evictedLine is what an evicted Redis client that has sent nothing reads.
var evictedLine = redisError(&Refusal{Msg: "too many connections are waiting at this gate; yours had sent nothing yet and was closed",
	Hint: "reconnect and send at once"})

// closeEvicted closes a victim of the pool. A Redis client that has sent
// nothing can be told why in one short write; anyone else is reset, which
// spares the gate a TIME_WAIT per socket. The victim's own goroutine sees
// its socket closed and writes the audit line.
func closeEvicted(e *pendingEntry) {
	if e.redis && e.progress == progressSilent {
		_ = e.nc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		_, _ = e.nc.Write(evictedLine)
		e.nc.Close()
		return
	}
	resetClose(e.nc)
}

// waitReadable waits, within nc's read deadline, until nc has a byte to
// read (or its end), without reading it: the connection is counted as
// started before its first byte leaves the socket, so that no eviction
// sees it empty-handed in between.
func waitReadable(nc net.Conn) error {
	rc, err := rawConn(nc)
	if rc == nil || err != nil {
		return err
	}
	var buf [1]byte
	return rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return err != syscall.EAGAIN // data, its end, or an error the read will see
	})
}

// rawConn returns the file descriptor under x for system calls of our
// own, or nil if x has none (a net.Pipe in tests).
func rawConn(x any) (syscall.RawConn, error) {
	sc, ok := x.(syscall.Conn)
	if !ok {
		return nil, nil
	}
	return sc.SyscallConn()
}

// resetClose closes nc with an RST rather than a FIN: for connections the
// gate drops under load, whose peers get nothing more.
func resetClose(nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	nc.Close()
}

// allows reports whether some route of l allows src.
func (l *Listener) allows(src netip.Addr) bool {
	for _, r := range l.Routes {
		if _, ok := r.Matcher.Lookup(src); ok {
			return true
		}
	}
	return false
}
