package proxy

// Faults on either side of a session: the upstream refuses, resets, stalls
// or is killed -9 in the middle of a COPY; the client vanishes in the
// middle of one; a reload lands in the middle of handshakes. In each case
// the other side is told or closed, the gate keeps serving, and its
// goroutines and file descriptors come back to where they were.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/spacegate/spacegate/internal/testenv"
)

// Behaviours of switchPeer.
const (
	peerForward = iota // relay to the shared PostgreSQL
	peerReset          // reset the connection once the StartupMessage is in
	peerStall          // read everything, answer nothing, never close
	peerSlow           // read everything, answer nothing, close at the client's end of stream
)

// switchPeer is an upstream whose behaviour the test switches between
// connections.
type switchPeer struct {
	*tcpPeer
	mode    atomic.Int32
	target  string
	release chan struct{} // closed when the test ends: stalled connections close
}

func startSwitchPeer(t *testing.T, target string) *switchPeer {
	p := &switchPeer{target: target, release: make(chan struct{})}
	var conns sync.WaitGroup
	p.tcpPeer = startPeer(t, func(nc net.Conn) {
		conns.Add(1)
		go func() {
			defer conns.Done()
			p.serve(nc)
		}()
	})
	// Cleanups run last first: release the stalled before the listener's
	// cleanup waits for its accept loop.
	t.Cleanup(func() { close(p.release); conns.Wait() })
	return p
}

func (p *switchPeer) serve(nc net.Conn) {
	defer nc.Close()
	switch p.mode.Load() {
	case peerReset:
		// After the StartupMessage has arrived, so that the gate is
		// splicing: a reset before it fails the gate's write of the
		// StartupMessage instead, which tells the client FATAL 08006.
		io.ReadFull(nc, make([]byte, 8))
		nc.(*net.TCPConn).SetLinger(0)
	case peerStall:
		// The gate's health probes connect and close without a byte:
		// let those go. A client's session has sent its StartupMessage.
		first := make([]byte, 1)
		if _, err := io.ReadFull(nc, first); err != nil {
			return
		}
		// Never answer and never close first; but once the gate gives up
		// and closes its side, so does this peer.
		gone := make(chan struct{})
		go func() { io.Copy(io.Discard, nc); close(gone) }()
		select {
		case <-p.release:
		case <-gone:
		}
	case peerSlow:
		io.Copy(io.Discard, nc)
	case peerForward:
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			return
		}
		defer up.Close()
		// Plain readers and writers: io.Copy between two TCP connections
		// would splice(2) through pooled pipes, whose descriptors outlive
		// the connections and blur the descriptor count.
		done := make(chan struct{})
		go func() {
			defer close(done)
			io.Copy(struct{ io.Writer }{up}, struct{ io.Reader }{nc})
			up.(*net.TCPConn).CloseWrite()
		}()
		io.Copy(struct{ io.Writer }{nc}, struct{ io.Reader }{up})
		nc.Close()
		<-done
	}
}

// postmasterPID reads the pid of a PostgreSQL server from its data directory.
func postmasterPID(t *testing.T, pg *testenv.Postgres) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(pg.DataDir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		t.Fatalf("postmaster.pid: %v", err)
	}
	return pid
}

// restartKilled kills what is left of a server whose postmaster was
// killed (its process group) and starts it again.
func restartKilled(t *testing.T, pg *testenv.Postgres, pid int) {
	t.Helper()
	syscall.Kill(-pid, syscall.SIGKILL)
	waitFor(t, 10*time.Second, "the killed server's processes to exit", func() bool {
		return syscall.Kill(-pid, 0) == syscall.ESRCH
	})
	var err error
	waitFor(t, 20*time.Second, "PostgreSQL to start again", func() bool {
		err = pg.Start()
		return err == nil
	})
}

// infiniteRows is a COPY source that never ends: it closes reached once
// after n bytes, then runs until the connection fails.
type infiniteRows struct {
	src     *rowSource
	n       int64
	reached chan struct{}
	once    sync.Once
	onReach func()
	pace    time.Duration // a pause before each read after n bytes
}

func newInfiniteRows(n int64, onReach func()) *infiniteRows {
	return &infiniteRows{src: newRowSource(1<<62, 7), n: n, reached: make(chan struct{}), onReach: onReach}
}

func (r *infiniteRows) Read(p []byte) (int, error) {
	if r.src.n >= r.n {
		r.once.Do(func() {
			if r.onReach != nil {
				r.onReach()
			}
			close(r.reached)
		})
		time.Sleep(r.pace)
	}
	return r.src.Read(p)
}

// triggerWriter discards what is written and calls fire once after n bytes.
type triggerWriter struct {
	n, seen int64
	once    sync.Once
	fire    func()
	reached chan struct{}
}

func newTriggerWriter(n int64, fire func()) *triggerWriter {
	return &triggerWriter{n: n, fire: fire, reached: make(chan struct{})}
}

func (w *triggerWriter) Write(p []byte) (int, error) {
	w.seen += int64(len(p))
	if w.seen >= w.n {
		w.once.Do(func() {
			if w.fire != nil {
				w.fire()
			}
			close(w.reached)
		})
	}
	return len(p), nil
}

// vanish closes a client's TCP connection with a reset, as a client that
// crashes or loses its network does (to the gate, a reset and a silence
// that keepalive ends look the same).
func vanish(c *pgx.Conn) {
	nc := c.PgConn().Conn()
	if u, ok := nc.(interface{ NetConn() net.Conn }); ok {
		nc = u.NetConn()
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	nc.Close()
}

// within runs f in a goroutine and returns its error, or fails the test if
// f has not returned after d.
func within(t *testing.T, d time.Duration, what string, f func() error) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	errc := make(chan error, 1)
	go func() { errc <- f() }()
	select {
	case err := <-errc:
		return time.Since(start), err
	case <-time.After(d):
		t.Fatalf("%s: no outcome after %s", what, d)
		return 0, nil
	}
}

// upstreamBackends counts the client backends of pg running a query like
// pattern, asked directly.
func upstreamBackends(t *testing.T, pg *testenv.Postgres, pattern string) int {
	t.Helper()
	c, err := pgConnect(t, pg.ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	return mustQueryInt(t, c, "select count(*) from pg_stat_activity where backend_type = 'client backend' and query like '"+pattern+"' and pid <> pg_backend_pid()")
}

// faultCase is one fault. upstream names the gate's PostgreSQL upstream;
// fault causes the fault and checks what the client saw; after it, the
// test checks that a new good connection works and resources come back.
type faultCase struct {
	name     string
	upstream string // "private", "peer" or "shared"
	bug      string // set while a known bug makes the case fail
	fault    func(t *testing.T, f *faultEnv)
}

// faultEnv is what a fault case works with.
type faultEnv struct {
	*env
	pg   *testenv.Postgres // the private PostgreSQL
	peer *switchPeer
}

// goodClient connects through the gate and runs a query.
func (f *faultEnv) goodClient(t *testing.T) {
	t.Helper()
	c, err := pgConnect(t, f.pgConnString(f.client))
	if err != nil {
		t.Fatalf("a good client: %v", err)
	}
	defer c.Close(context.Background())
	if got := mustQueryInt(t, c, "select 6*7"); got != 42 {
		t.Fatalf("select 6*7 = %d", got)
	}
}

func TestFaults(t *testing.T) {
	pg := testenv.StartPostgresT(t, testenv.PostgresOptions{})
	shared := sharedPostgres(t)
	cases := []faultCase{
		{name: "upstream refuses", upstream: "private", fault: func(t *testing.T, f *faultEnv) {
			if err := f.pg.Stop(); err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := f.pg.Start(); err != nil {
					t.Fatal(err)
				}
			}()
			took, err := within(t, 10*time.Second, "connect to a stopped upstream", func() error {
				c, err := pgConnect(t, f.pgConnString(f.client))
				if err == nil {
					c.Close(context.Background())
				}
				return err
			})
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "08006" {
				t.Fatalf("got %v, want FATAL 08006 from the gate", err)
			}
			t.Logf("client told in %s: %s", took.Round(time.Millisecond), pgErr.Message)
		}},
		{name: "upstream resets", upstream: "peer", fault: func(t *testing.T, f *faultEnv) {
			f.peer.mode.Store(peerReset)
			defer f.peer.mode.Store(peerForward)
			took, err := within(t, 10*time.Second, "connect to a resetting upstream", func() error {
				c, err := pgConnect(t, f.pgConnString(f.client))
				if err == nil {
					c.Close(context.Background())
				}
				return err
			})
			if err == nil {
				t.Fatal("connected through an upstream that resets")
			}
			t.Logf("client saw in %s: %v", took.Round(time.Millisecond), err)
		}},
		{name: "upstream answers nothing, closes at EOF", upstream: "peer", fault: func(t *testing.T, f *faultEnv) {
			f.peer.mode.Store(peerSlow)
			defer f.peer.mode.Store(peerForward)
			stalledClient(t, f)
			waitFor(t, 5*time.Second, "the session to end", func() bool { return f.srv.conns.len() == 0 })
		}},
		{name: "upstream stalls for good", upstream: "peer",
			fault: func(t *testing.T, f *faultEnv) {
				f.peer.mode.Store(peerStall)
				defer f.peer.mode.Store(peerForward)
				stalledClient(t, f)
				waitFor(t, 10*time.Second, "the gate to end a session whose client has gone", func() bool { return f.srv.conns.len() == 0 })
			}},
		{name: "upstream postmaster killed -9 mid-COPY in", upstream: "private", fault: func(t *testing.T, f *faultEnv) {
			c := connectToSink(t, f)
			defer c.Close(context.Background())
			pid := postmasterPID(t, f.pg)
			// After the kill the client sends slowly: a backend fed
			// without a pause notices its postmaster's death only when it
			// next waits for input (25 s into a stream at full speed).
			var killed time.Time
			src := newInfiniteRows(8<<20, func() { killed = time.Now(); syscall.Kill(pid, syscall.SIGKILL) })
			src.pace = 20 * time.Millisecond
			_, err := within(t, 30*time.Second, "COPY in to a killed upstream", func() error {
				_, err := c.PgConn().CopyFrom(context.Background(), src, "copy sink from stdin")
				return err
			})
			if err == nil {
				t.Fatal("COPY into a killed server succeeded")
			}
			<-src.reached // orders the write of killed before this read
			t.Logf("client saw %s after the kill: %v", time.Since(killed).Round(time.Millisecond), err)
			restartKilled(t, f.pg, pid)
		}},
		{name: "upstream killed -9 mid-COPY out", upstream: "private", fault: func(t *testing.T, f *faultEnv) {
			c, err := pgConnect(t, f.pgConnString(f.client))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(context.Background())
			pid := postmasterPID(t, f.pg)
			// The whole server at once, as when its machine dies: no
			// backend lives to say goodbye.
			var killed time.Time
			w := newTriggerWriter(8<<20, func() { killed = time.Now(); syscall.Kill(-pid, syscall.SIGKILL) })
			_, err = within(t, 30*time.Second, "COPY out of a killed upstream", func() error {
				_, err := c.PgConn().CopyTo(context.Background(), w, "copy (select generate_series(1, 100000000), repeat('x', 200)) to stdout")
				return err
			})
			if err == nil {
				t.Fatal("COPY out of a killed server succeeded")
			}
			t.Logf("client saw %s after the kill: %v", time.Since(killed).Round(time.Millisecond), err)
			restartKilled(t, f.pg, pid)
		}},
		{name: "client vanishes mid-COPY out", upstream: "private", fault: func(t *testing.T, f *faultEnv) {
			c, err := pgConnect(t, f.pgConnString(f.client))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(context.Background())
			w := newTriggerWriter(8<<20, func() { vanish(c) })
			_, err = within(t, 30*time.Second, "COPY out by a client that vanishes", func() error {
				_, err := c.PgConn().CopyTo(context.Background(), w, "copy (select generate_series(1, 100000000), repeat('x', 200)) to stdout")
				return err
			})
			if err == nil {
				t.Fatal("COPY out went on after the client closed")
			}
			waitFor(t, 10*time.Second, "the upstream backend to end", func() bool { return upstreamBackends(t, f.pg, "copy (select generate_series%") == 0 })
			waitFor(t, 5*time.Second, "the session to end", func() bool { return f.srv.conns.len() == 0 })
		}},
		{name: "client vanishes mid-COPY in", upstream: "private", fault: func(t *testing.T, f *faultEnv) {
			c := connectToSink(t, f)
			defer c.Close(context.Background())
			src := newInfiniteRows(8<<20, func() { vanish(c) })
			_, err := within(t, 30*time.Second, "COPY in by a client that vanishes", func() error {
				_, err := c.PgConn().CopyFrom(context.Background(), src, "copy sink from stdin")
				return err
			})
			if err == nil {
				t.Fatal("COPY in went on after the client closed")
			}
			waitFor(t, 10*time.Second, "the upstream backend to end", func() bool { return upstreamBackends(t, f.pg, "copy sink%") == 0 })
			waitFor(t, 5*time.Second, "the session to end", func() bool { return f.srv.conns.len() == 0 })
		}},
		{name: "rules file truncated, reloaded, then written", upstream: "shared",
			fault: func(t *testing.T, f *faultEnv) {
				// As a config tool that truncates, then writes a moment
				// later; a reload (SIGHUP, a file event) lands in between
				// and sees the file empty. The old rules keep serving
				// until the write lands, and then the new ones do.
				live, err := pgConnect(t, f.pgConnString(f.client))
				if err != nil {
					t.Fatal(err)
				}
				defer live.Close(context.Background())
				admits := func(src string) error {
					c, err := pgConnect(t, f.pgConnString(f.client), withDialFrom(src))
					if err == nil {
						c.Close(context.Background())
					}
					return err
				}
				if err := admits("127.0.0.2"); err == nil {
					t.Fatal("127.0.0.2 admitted by the first rules, which do not name it")
				}
				gen := f.generation()
				failed := f.logs.FilterMessage("reload failed; the previous configuration keeps serving").Len()

				path := filepath.Join(f.dir, "rules.yaml")
				w, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer w.Close()
				if err := f.srv.Reload(); err == nil || !strings.Contains(fmt.Sprint(problemStrings(err)), "is empty") {
					t.Fatalf("Reload of a truncated rules file = %v, want the problem that it is empty", err)
				}
				if got := f.generation(); got != gen {
					t.Fatalf("generation %d after a reload of a truncated rules file, want %d still", got, gen)
				}
				if n := f.logs.FilterMessage("reload failed; the previous configuration keeps serving").Len(); n <= failed {
					t.Error("the failed reload was not logged")
				}
				if !strings.Contains(f.get(t, "/metrics"), `spacegate_reloads_total{result="error"}`) {
					t.Error(`the failed reload was not counted in spacegate_reloads_total{result="error"}`)
				}
				requireAlive(t, live)
				if err := admits("127.0.0.1"); err != nil {
					t.Fatalf("127.0.0.1, allowed by the old rules, while the file is empty: %v", err)
				}
				err = admits("127.0.0.2")
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) || pgErr.Code != "28000" || !strings.Contains(pgErr.Message, "source address 127.0.0.2 is not allowed") {
					t.Fatalf("127.0.0.2, refused by the old rules, while the file is empty: got %v, want FATAL 28000", err)
				}

				if _, err := w.Write(rulesYAML("127.0.0.1/32", "127.0.0.2/32")); err != nil {
					t.Fatal(err)
				}
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
				if err := f.srv.Reload(); err != nil {
					t.Fatalf("Reload once the write landed: %v", err)
				}
				if got := f.generation(); got <= gen {
					t.Fatalf("generation %d after the write landed, want more than %d", got, gen)
				}
				if err := admits("127.0.0.2"); err != nil {
					t.Fatalf("127.0.0.2, added by the new rules: %v", err)
				}
				requireAlive(t, live)
			}},
		{name: "reload mid-handshake", upstream: "shared", fault: func(t *testing.T, f *faultEnv) {
			const clients = 50
			gen := f.srv.Snapshot().Generation
			var wg sync.WaitGroup
			errs := make(chan error, clients)
			start := make(chan struct{})
			for range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					c, err := pgConnect(t, f.pgConnString(f.client))
					if err != nil {
						errs <- err
						return
					}
					defer c.Close(context.Background())
					var n int
					if err := c.QueryRow(context.Background(), "select 1").Scan(&n); err != nil {
						errs <- err
					}
				}()
			}
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			close(start)
			reloads := 0
			for i := 0; ; i++ {
				select {
				case <-done:
				default:
					// A new rules file every time, so that each reload builds
					// a new matcher; written whole, as the CLI writes it.
					renameWrite(t, filepath.Join(f.dir, "rules.yaml"), rulesYAML("127.0.0.1/32", "::1/128", fmt.Sprintf("10.%d.%d.0/24", i/256%256, i%256)))
					if err := f.srv.Reload(); err != nil {
						t.Fatalf("reload: %v", err)
					}
					reloads++
					continue
				}
				break
			}
			close(errs)
			for err := range errs {
				t.Errorf("a client handshaking during reloads: %v", err)
			}
			t.Logf("%d clients connected during %d reloads (generation %d to %d)", clients, reloads, gen, f.srv.Snapshot().Generation)
			if reloads < 3 {
				t.Errorf("only %d reloads happened during the handshakes", reloads)
			}
		}},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.bug != "" && os.Getenv("SPACEGATE_KNOWN_BUGS") != "1" {
				t.Skip("BUG: " + tc.bug + " (SPACEGATE_KNOWN_BUGS=1 runs it)")
			}
			f := &faultEnv{pg: pg}
			var upstream string
			switch tc.upstream {
			case "private":
				upstream = pg.Addr
			case "peer":
				f.peer = startSwitchPeer(t, shared.Addr)
				upstream = f.peer.ln.Addr().String()
			default:
				upstream = shared.Addr
			}
			f.env = newEnv(t, envOptions{noRedis: true, pgUpstream: upstream})
			f.goodClient(t) // warm up what the first connection creates
			base := settledResources(t)
			tc.fault(t, f)
			f.goodClient(t)
			got := awaitBaseline(t, base, 10*time.Second)
			t.Logf("baseline %s, after %s", base, got)
		})
	}
}

// connectToSink connects through the gate and makes sure the table that
// COPY in writes to exists.
func connectToSink(t *testing.T, f *faultEnv) *pgx.Conn {
	t.Helper()
	c, err := pgConnect(t, f.pgConnString(f.client))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(context.Background(), "create table if not exists sink (id bigint, v text)"); err != nil {
		c.Close(context.Background())
		t.Fatal(err)
	}
	return c
}

// stalledClient connects through the gate to an upstream that answers
// nothing; the client gives up at its connect timeout.
func stalledClient(t *testing.T, f *faultEnv) {
	t.Helper()
	took, err := within(t, 10*time.Second, "connect to a silent upstream", func() error {
		c, err := pgConnect(t, f.pgConnString(f.client), func(c *pgx.ConnConfig) { c.ConnectTimeout = 2 * time.Second })
		if err == nil {
			c.Close(context.Background())
		}
		return err
	})
	if err == nil {
		t.Fatal("connected through an upstream that answers nothing")
	}
	t.Logf("client saw in %s: %v", took.Round(time.Millisecond), err)
}
