package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Gate is what the admin endpoints need of a running gate. proxy.Server
// implements it. Its methods are called from the HTTP server's goroutines,
// concurrently, and must be safe for that.
type Gate interface {
	// Status returns the document of /v1/status.
	Status() Status
	// IsReady reports whether the gate wants new connections: every
	// listener open, not draining and, if the config asks, some upstream
	// reachable. /readyz answers 503 otherwise.
	IsReady() bool
	// NotReady returns why the gate is not ready, in a few words for the
	// body of /readyz (which anyone who reaches the endpoint may read: no
	// addresses), or "" when it is ready.
	NotReady() string
	// AdminToken returns the bearer token in force, or nil when there is
	// none. It is asked on every request, so that a reload that changes
	// the token takes effect at once.
	AdminToken() []byte
	// Fleet returns the entries of admin.fleet in force: how to reach
	// every replica's admin endpoint. Empty means this replica alone.
	Fleet() []string
}

// Options configure a Handler.
type Options struct {
	// Metrics are served at /metrics. If nil, /metrics is not served.
	Metrics *Metrics
	// Pprof serves Go's profiler under /debug/pprof/.
	Pprof bool
	// Public says the endpoint is bound to an address other than loopback.
	// Then a gate without a token refuses every path but the probes,
	// rather than serve them to anyone.
	Public bool
}

// open are the paths served without the admin token: the probes of
// orchestrators and load balancers, which cannot send one and learn
// nothing from them.
func open(path string) bool { return path == "/healthz" || path == "/readyz" }

// Handler returns the admin API of gate: /metrics, /healthz, /readyz,
// /v1/status, /v1/fleet (every replica of admin.fleet, asked in parallel
// within FleetTimeout with the gate's own token) and, with opts.Pprof, /debug/pprof/. Every path but /healthz
// and /readyz wants the gate's token as Authorization: Bearer TOKEN
// (see Gate.AdminToken and Options.Public).
func Handler(gate Gate, opts Options) http.Handler {
	mux := http.NewServeMux()
	if opts.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	if opts.Metrics != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Metrics.Registry, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if why := gate.NotReady(); why != "" {
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st := gate.Status()
		if r.URL.Query().Get("connections") == "0" {
			st.Connections = []Conn{} // /v1/fleet asks without: they can be many
		}
		writeJSON(w, st)
	})
	asker := &fleetAsker{client: fleetClient(), resolver: net.DefaultResolver}
	mux.HandleFunc("GET /v1/fleet", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), FleetTimeout)
		defer cancel()
		self := func() Replica {
			scheme := "http"
			if r.TLS != nil {
				scheme = "https"
			}
			return NewReplica(scheme+"://"+r.Host, gate.Status())
		}
		writeJSON(w, asker.ask(ctx, gate.Fleet(), gate.AdminToken(), self))
	})
	return requireToken(mux, gate, opts.Public)
}

// writeJSON writes v as indented JSON.
func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// requireToken serves every path but the probes only to a request that
// carries the gate's token in force. Without a token the endpoint is open,
// but only on a loopback address: public says the address is not, and then
// a missing token (a reload that dropped admin.token_file while the
// listener kept its address) refuses everything rather than open up.
func requireToken(next http.Handler, gate Gate, public bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if open(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		want := gate.AdminToken()
		if want == nil && !public {
			next.ServeHTTP(w, r)
			return
		}
		if want == nil || !bearerMatches(r.Header.Get("Authorization"), want) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="spacegate admin"`)
			http.Error(w, "spacegate admin: send the token of admin.token_file as Authorization: Bearer TOKEN", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// bearerMatches reports whether the Authorization header carries want. The
// comparison is of SHA-256 digests in constant time, so that neither the
// token's bytes nor its length show in the time taken.
func bearerMatches(header string, want []byte) bool {
	scheme, got, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	g := sha256.Sum256([]byte(strings.TrimSpace(got)))
	w := sha256.Sum256(want)
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

// shutdownTimeout bounds how long Shutdown waits for requests in flight
// (a CPU profile takes 30s by default; it is cut).
const shutdownTimeout = 2 * time.Second

// Server serves a Handler on one listener. Create it with NewServer; its
// methods are safe for concurrent use.
type Server struct {
	http *http.Server
}

// NewServer returns a Server of Handler(gate, opts).
func NewServer(gate Gate, opts Options) *Server {
	return &Server{http: &http.Server{Handler: Handler(gate, opts), ReadHeaderTimeout: 5 * time.Second}}
}

// Serve serves ln until Shutdown, and closes ln. It returns
// http.ErrServerClosed after Shutdown, or why it stopped.
func (s *Server) Serve(ln net.Listener) error { return s.http.Serve(ln) }

// Shutdown stops the listener and waits, at most a couple of seconds, for
// the requests in flight.
func (s *Server) Shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	return s.http.Shutdown(ctx)
}
