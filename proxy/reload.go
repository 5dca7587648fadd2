package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"go.uber.org/zap"

	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/internal/filewatch"
)

// reloadDebounce coalesces a burst of file events (an editor's temp file and
// rename, a Kubernetes ..data swap, a CLI rewriting a rules file and a CRL)
// into one reload, while keeping change-to-effect well under 100 ms.
const reloadDebounce = 30 * time.Millisecond

// Reload re-reads the config file and every file it names, validates them,
// and swaps the result in whole. If anything is wrong the configuration in
// force keeps serving: the error says what, it is logged, and counted in
// spacegate_reloads_total{result="error"}. After a swap, live connections
// are checked again and those no longer allowed are cut. Reload is safe for
// concurrent use; reloads run one at a time.
func (s *Server) Reload() error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	s.notify("reloading")
	defer s.notify("ready")
	start := time.Now()
	old := s.Snapshot()
	snap, err := s.loadSnapshot(old)
	if err == nil {
		err = s.applyListeners(old, snap)
	}
	if err != nil {
		s.metrics.Reloads.WithLabelValues("error").Inc()
		s.metrics.ReloadOK.Set(0)
		s.log.Error("reload failed; the previous configuration keeps serving",
			zap.Uint64("generation", old.Generation), zap.Strings("problems", problemStrings(err)))
		return err
	}
	s.snap.Store(snap)
	observeSnapshot(s.metrics, snap)
	s.metrics.Reloads.WithLabelValues("ok").Inc()
	s.metrics.LastReload.SetToCurrentTime()
	s.warnStaleCRLs(snap)
	if s.watcher != nil {
		if err := s.watcher.SetPaths(snap.Config.Files()); err != nil {
			s.log.Warn("watching the config's files", zap.Error(err))
		}
	}
	cut := s.recheckAll(snap)
	s.log.Info("reloaded", zap.Uint64("generation", snap.Generation), zap.Int("routes", len(snap.Routes)),
		zap.Int("connections_cut", cut), zap.Duration("took", time.Since(start)))
	s.logWarnings(snap)
	return nil
}

// loadSnapshot builds the next snapshot from the config file.
func (s *Server) loadSnapshot(old *Snapshot) (*Snapshot, error) {
	path := old.Config.Path
	if path == "" {
		return nil, errors.New("the configuration was not read from a file; nothing to reload")
	}
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	return Build(cfg, old.Generation+1)
}

// applyListeners opens the listen addresses snap adds and closes those it
// drops. New listeners are opened first: if one cannot bind, those just
// opened are closed again and the reload fails with nothing changed. The
// connections of a dropped address are not cut for that: they drain.
func (s *Server) applyListeners(old, snap *Snapshot) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.acceptCtx == nil {
		return nil // not running: Run opens what the snapshot names
	}
	opened := map[string]net.Listener{}
	for _, l := range snap.Listeners {
		if _, ok := s.listeners[l.Addr]; ok {
			continue
		}
		ln, err := listen(l.Addr)
		if err != nil {
			for _, o := range opened {
				o.Close()
			}
			return fmt.Errorf("route %q: cannot listen on %s: %w", l.Routes[0].Name, l.Addr, err)
		}
		opened[l.Addr] = ln
	}
	for addr, ln := range opened {
		s.listeners[addr] = ln
		s.startAccepting(addr, ln)
		s.log.Info("listening", zap.String("listen", ln.Addr().String()), zap.Uint64("generation", snap.Generation))
	}
	for addr, ln := range s.listeners {
		if snap.Listener(addr) == nil {
			ln.Close()
			delete(s.listeners, addr)
			s.log.Info("stopped listening; its connections drain", zap.String("listen", addr))
		}
	}
	return nil
}

// watch reloads whenever one of the config's files changes, until ctx ends.
func (s *Server) watch(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.watcher.Changes():
			_ = s.Reload() // logged and counted inside
		case err := <-s.watcher.Errors():
			s.log.Warn("file watch", zap.Error(err))
		}
	}
}

// startWatching starts the file watcher; without inotify it still polls.
func (s *Server) startWatching(snap *Snapshot) error {
	if snap.Config.Path == "" {
		return nil
	}
	w, err := filewatch.New(snap.Config.Files(), filewatch.Options{Debounce: reloadDebounce, Poll: s.pollInterval})
	if err != nil {
		return fmt.Errorf("watching the config's files: %w", err)
	}
	s.watcher = w
	return nil
}

// recheckAll checks every spliced connection against snap and cuts those
// that fail; it returns how many it cut.
func (s *Server) recheckAll(snap *Snapshot) int {
	n := 0
	for _, c := range s.conns.spliced() {
		if ref := c.recheck(snap); ref != nil {
			c.cut(ref)
			n++
		}
	}
	return n
}

func problemStrings(err error) []string {
	var out []string
	for _, p := range config.Problems(err) {
		out = append(out, p.Error())
	}
	return out
}
