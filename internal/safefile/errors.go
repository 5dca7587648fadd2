package safefile

import (
	"errors"
	"fmt"
)

var (
	// ErrNotRegular means the path names something other than a regular
	// file, such as a FIFO, a device, a directory or a socket.
	ErrNotRegular = errors.New("not a regular file")

	// ErrTooLarge means the file is larger than the limit for its kind,
	// or grew past it while being read.
	ErrTooLarge = errors.New("file too large")
)

// fileError is a refusal: its message is a whole sentence, and it matches
// its sentinel with errors.Is without repeating the sentinel's text.
type fileError struct {
	msg string
	err error
}

func errorf(sentinel error, format string, args ...any) error {
	return &fileError{msg: fmt.Sprintf(format, args...), err: sentinel}
}

func (e *fileError) Error() string { return e.msg }
func (e *fileError) Unwrap() error { return e.err }
