package filewatch

import "errors"

// ErrClosed is returned by [Watcher.SetPaths] after [Watcher.Close].
var ErrClosed = errors.New("filewatch: watcher is closed")
