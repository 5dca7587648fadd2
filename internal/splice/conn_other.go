//go:build !linux

package splice

import "errors"

// Without event loops no Conn is ever taken over.

var errNotTaken = errors.New("splice: conn taken over without an event loop")

func (c *Conn) takenRead([]byte) (int, error)  { return 0, errNotTaken }
func (c *Conn) takenWrite([]byte) (int, error) { return 0, errNotTaken }
func (c *Conn) takenCloseWrite() error         { return errNotTaken }
func (c *Conn) takenClose() error              { return errNotTaken }
