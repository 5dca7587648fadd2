//go:build unix

package filewatch

import (
	"io/fs"
	"syscall"
)

// fileID returns the device and inode of fi, which tell a file replaced by
// rename apart from one rewritten in place.
func fileID(fi fs.FileInfo) (dev, ino uint64) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0
	}
	// Dev is int32 on some platforms, uint64 on Linux.
	return uint64(st.Dev), uint64(st.Ino)
}
