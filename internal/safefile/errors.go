package safefile

import "errors"

var (
	// ErrNotRegular means the path names something other than a regular
	// file, such as a FIFO, a device, a directory or a socket.
	ErrNotRegular = errors.New("not a regular file")

	// ErrTooLarge means the file is larger than the limit for its kind,
	// or grew past it while being read.
	ErrTooLarge = errors.New("file too large")
)
