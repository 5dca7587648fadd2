package filewatch

import (
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"syscall"

	"github.com/spacegate/spacegate/internal/safefile"
)

// hashLimit is the size below which a file is fingerprinted by its content.
// Certificates, keys and YAML are a few KiB; hashing them on every check is
// cheaper than the reload a false alarm would cost.
const hashLimit = 1 << 20

// A fingerprint identifies one state of a path. Two fingerprints are equal
// (==) if and only if the Watcher considers the path unchanged. The zero
// fingerprint means the path does not exist.
type fingerprint struct {
	exists bool
	// errText is set when the path exists but cannot be inspected, so that a
	// change in accessibility (or its repair) is a change.
	errText string
	mode    fs.FileMode
	size    int64

	// For files below hashLimit, only the content counts: sum is set and
	// the fields below are zero.
	hashed bool
	sum    [sha256.Size]byte

	mtime    int64 // UnixNano
	dev, ino uint64
	target   string // the path with every symlink resolved
}

// fingerprintOf returns the current fingerprint of path, following
// symlinks. It never fails: errors become part of the fingerprint.
func fingerprintOf(path string) fingerprint {
	fi, err := os.Stat(path)
	if err != nil {
		if isNotExist(err) {
			return fingerprint{}
		}
		return fingerprint{exists: true, errText: err.Error()}
	}
	fp := fingerprint{exists: true, mode: fi.Mode(), size: fi.Size()}
	if fi.Mode().IsRegular() && fi.Size() < hashLimit {
		n, sum, err := hashFile(path)
		if err == nil {
			fp.size, fp.hashed, fp.sum = n, true, sum
			return fp
		}
		if isNotExist(err) {
			// Removed between Stat and Open; the event for that is
			// already queued, but report the state as it is now.
			return fingerprint{}
		}
		// Unreadable (permissions): fall back to metadata, and keep the
		// error so that fixing the permissions is a change.
		fp.errText = err.Error()
	}
	fp.mtime = fi.ModTime().UnixNano()
	fp.dev, fp.ino = fileID(fi)
	if target, err := filepath.EvalSymlinks(path); err == nil {
		fp.target = target
	}
	return fp
}

// hashFile returns the length and SHA-256 of at most hashLimit bytes of the
// file at path. A file that grew past hashLimit while being read still gets a
// sum that differs from the one it had before.
func hashFile(path string) (int64, [sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	// Not os.Open: the path may have become a FIFO since the Stat, and
	// opening one without a writer blocks.
	f, _, err := safefile.Open(path, safefile.Limit{Kind: "file", Max: math.MaxInt64})
	if err != nil {
		return 0, sum, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, hashLimit))
	if err != nil {
		return 0, sum, err
	}
	h.Sum(sum[:0])
	return n, sum, nil
}

// isNotExist reports whether err means the path is absent, including the
// case where one of its parent components is not a directory.
func isNotExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}
