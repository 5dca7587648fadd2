//go:build !unix

package filewatch

import "io/fs"

// fileID returns zeros where the platform has no inode; size, modification
// time and content still tell changes apart.
func fileID(fs.FileInfo) (dev, ino uint64) { return 0, 0 }
