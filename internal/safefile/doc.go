// Package safefile reads the files a config names, and the config itself,
// so that no file can wedge or exhaust the process reading it.
//
// [ReadFile] refuses anything but a regular file (after following
// symlinks): a FIFO would block the reader until someone writes to it, and
// a device such as /dev/zero never ends. It opens the file without
// blocking (O_NONBLOCK, O_NOCTTY) and checks what it opened, not only what
// the path named a moment before, and reads at most a bound that depends on
// the kind of file ([Limit]): a file larger than its kind allows, or one
// that grows past it while being read, is refused. Errors name the path and
// say what it is, and match [ErrNotRegular] or [ErrTooLarge] with
// [errors.Is]; a missing file matches [io/fs.ErrNotExist] as with
// [os.ReadFile].
//
// The package keeps no state; its functions may be called from many
// goroutines at once.
package safefile
