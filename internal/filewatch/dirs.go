package filewatch

import (
	"fmt"
	"os"
	"path/filepath"
)

// arm brings the directory watches in line with w.paths: for each path, the
// nearest existing ancestor of its parent directory, and the directory of its
// resolved symlink target. Directories no longer needed are dropped. Adding a
// directory that is already watched is cheap and repairs a watch the kernel
// dropped because the directory was removed and re-created. w.mu must be
// held.
func (w *Watcher) arm() {
	if w.fsw == nil {
		return
	}
	want := make(map[string]bool)
	for _, p := range w.paths {
		dir := filepath.Dir(p)
		if d := w.add(dir); d != "" {
			want[d] = true
		}
		// A symlink may point into another directory (certbot's live/
		// into archive/); watch there too, so that an in-place write to
		// the target is seen.
		if target, err := filepath.EvalSymlinks(p); err == nil {
			if tdir := filepath.Dir(target); tdir != dir && !want[tdir] {
				if d := w.add(tdir); d != "" {
					want[d] = true
				}
			}
		}
	}
	for d := range w.watched {
		if !want[d] {
			// The kernel may have dropped it already with the directory;
			// either way it is gone.
			_ = w.fsw.Remove(d)
		}
	}
	w.watched = want
}

// add watches dir, or its nearest existing ancestor if dir does not exist,
// and returns the directory actually watched, or "" if none could be. A
// failure other than absence is reported once per directory and error.
func (w *Watcher) add(dir string) string {
	for d := dir; ; {
		fi, err := os.Stat(d)
		if err == nil && fi.IsDir() {
			err = w.fsw.Add(d)
			if err == nil {
				delete(w.reported, d)
				return d
			}
		}
		if err != nil && !isNotExist(err) {
			if msg := err.Error(); w.reported[d] != msg {
				w.reported[d] = msg
				w.report(fmt.Errorf("watching directory %q: %w", d, err))
			}
			return ""
		}
		// Absent, not a directory, or removed since Stat: watch the
		// parent, whose events will show the directory appearing.
		parent := filepath.Dir(d)
		if parent == d {
			return ""
		}
		d = parent
	}
}
