// Package atomicfile writes files so that readers never see them half
// written, and serialises the processes that change them.
//
// [WriteFile] writes a temporary file beside its target and renames it into
// place, so a watcher such as the running gate reads either the old file or
// the whole new one. [Lock] takes an exclusive advisory lock
// (flock(2), through github.com/gofrs/flock) on a lock file, so that two
// `spacegate` commands changing the same file one after the other cannot
// lose each other's change.
//
// The package keeps no state; its functions may be called from many
// goroutines and processes at once.
package atomicfile
