package proxy

// The gate decides on the user of a StartupMessage and then forwards the
// packet unchanged, so it must read the packet exactly as the upstream will:
// if the two readings differ, a client can be approved as one user and log
// in as another. This file follows ProcessStartupPacket
// (src/backend/tcop/backend_startup.c in PostgreSQL 17 and later,
// src/backend/postmaster/postmaster.c before), which reads the packet the
// same way from PostgreSQL 14 (which removed protocol 2) to 18:
//
//   - the major version must be 3; a newer minor version is negotiated
//     (NegotiateProtocolVersion), not refused, so it is left to the upstream;
//     a client of protocol 2 or older is refused in its own format;
//   - name\0value\0 pairs follow, and the list ends at the first empty name;
//     that terminator must be the packet's last byte;
//   - a parameter given twice takes its last value;
//   - the user must be given and not empty; the database defaults to it;
//   - both are truncated to NAMEDATALEN-1 bytes.
//
// A CancelRequest is a pid and a secret key: 4 bytes in protocol 3.0, where
// PostgreSQL 17 and older accept exactly a 16-byte packet, and 1 to 256
// bytes since PostgreSQL 18 (ProcessCancelRequestPacket).

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

const (
	// protocolLatestMinor is the newest 3.x minor version the gate knows of
	// (3.2, PostgreSQL 18); it is named in refusals only, since any 3.x goes
	// to the upstream to negotiate.
	protocolLatestMinor = 2
	// nameDataLen is PostgreSQL's NAMEDATALEN: names are cut to one less.
	nameDataLen = 64
	// cancelKeyOffset is offsetof(CancelRequestPacket, cancelAuthCode) plus
	// the length word: length, code and pid come before the key.
	cancelKeyOffset = 12
	// maxCancelKey is the longest secret key PostgreSQL accepts.
	maxCancelKey = 256
)

// startupMessage is what the gate reads from a StartupMessage.
type startupMessage struct {
	major, minor uint16
	user         string
	database     string
}

// parseStartupMessage reads pkt, a whole StartupMessage (length word and
// version included), as PostgreSQL reads it. A packet PostgreSQL would
// refuse is refused with PostgreSQL's SQLSTATE and wording.
func parseStartupMessage(pkt []byte) (startupMessage, *Refusal) {
	var sm startupMessage
	if len(pkt) < 8 {
		return sm, refuse(ReasonProtocolViolation, "invalid length of startup packet", nil)
	}
	code := binary.BigEndian.Uint32(pkt[4:8])
	sm.major, sm.minor = uint16(code>>16), uint16(code)
	if sm.major != protocolMajor3 {
		return sm, unsupportedProtocol(code)
	}
	// PostgreSQL reads the body as C strings in a buffer with one zero byte
	// added, so a string that runs to the end of the packet ends there.
	b := pkt[8:]
	cstring := func(off int) string {
		if off >= len(b) {
			return ""
		}
		if i := bytes.IndexByte(b[off:], 0); i >= 0 {
			return string(b[off : off+i])
		}
		return string(b[off:])
	}
	var user, database string
	off := 0
	for off < len(b) {
		if b[off] == 0 {
			break // the terminator
		}
		name := cstring(off)
		valOff := off + len(name) + 1
		if valOff >= len(b) {
			break // no value: refused below
		}
		val := cstring(valOff)
		switch name {
		case "user":
			user = val
		case "database":
			database = val
		}
		off = valOff + len(val) + 1
	}
	if off != len(b)-1 {
		return sm, refuse(ReasonProtocolViolation, "invalid startup packet layout: expected terminator as last byte", nil)
	}
	if user == "" {
		return sm, refuse(ReasonUserMissing, "no PostgreSQL user name specified in startup packet", nil)
	}
	if database == "" {
		database = user
	}
	sm.user, sm.database = truncateName(user), truncateName(database)
	return sm, nil
}

// truncateName cuts s as PostgreSQL cuts an over-long name: bytes, not
// characters, so that the gate checks the very name the server looks up.
func truncateName(s string) string {
	if len(s) >= nameDataLen {
		return s[:nameDataLen-1]
	}
	return s
}

// errOldProtocol marks a refusal to a client of protocol 2 or older, which
// PostgreSQL answers in that protocol's format: a v3 ErrorResponse would be
// garbage to it.
var errOldProtocol = errors.New("client speaks protocol 2 or older; answered in its format")

// unsupportedProtocol refuses a start-up packet whose code is neither a
// request PostgreSQL knows nor a protocol 3 version, as PostgreSQL does:
// it reads every other code as a protocol version.
func unsupportedProtocol(code uint32) *Refusal {
	r := refuse(ReasonUnsupportedProtocol, fmt.Sprintf("unsupported frontend protocol %d.%d: server supports %d.0 to %d.%d",
		code>>16, code&0xffff, protocolMajor3, protocolMajor3, protocolLatestMinor), nil)
	// PostgreSQL answers version 0.0 as protocol 3: it cannot tell it from
	// "not set yet" (send_message_to_frontend).
	if code>>16 < protocolMajor3 && code != 0 {
		r.Err = errOldProtocol
	}
	return r
}

// checkCancelPacket accepts a CancelRequest of the lengths PostgreSQL 18
// accepts: a pid and a secret key of 1 to 256 bytes. PostgreSQL never
// answers a cancel, even a malformed one (COMMERROR: the log only), so
// neither does the gate.
func checkCancelPacket(pkt []byte) *Refusal {
	var r *Refusal
	switch {
	case len(pkt) < cancelKeyOffset:
		r = refuse(ReasonProtocolViolation, "invalid length of cancel request packet", nil)
	case len(pkt)-cancelKeyOffset == 0 || len(pkt)-cancelKeyOffset > maxCancelKey:
		r = refuse(ReasonProtocolViolation, "invalid length of cancel key in cancel request packet", nil)
	default:
		return nil
	}
	r.quiet = true
	return r
}
