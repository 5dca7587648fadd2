package proxy

import (
	"errors"
	"fmt"

	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/tlsconf"
)

// checkSource checks the source address against the route's IP rules.
func (c *conn) checkSource() error {
	return c.checkSourceOn(c.route)
}

func (c *conn) checkSourceOn(r *Route) error {
	id, ok := r.Matcher.Lookup(c.src.Addr())
	if !ok {
		return &Refusal{
			Reason: ReasonIPNotAllowed,
			Msg:    fmt.Sprintf("source address %s is not allowed for route %s", c.src.Addr(), r.Name),
			Hint:   "ask the operator to add an IP rule for this address (spacegate ip-rules create)",
		}
	}
	c.ruleID = id
	return nil
}

// admit runs the checks, in order, each with its own reason: source
// address, certificate (present, chain, usage, dates, CRL), identity
// allowed on the route, PostgreSQL user bound to the certificate, route
// enabled, connection limit.
func (c *conn) admit() error {
	if c.early != nil {
		return c.early
	}
	if err := c.checkSource(); err != nil {
		return err
	}
	c.chain = c.tlsConn.ConnectionState().PeerCertificates
	id, err := c.route.Material.Verify(c.chain, c.srv.now())
	c.identity = id
	if err != nil {
		var ve *tlsconf.VerifyError
		if errors.As(err, &ve) {
			c.identity = ve.Identity
			return &Refusal{Reason: certReason(ve.Reason), Msg: ve.Error(), Hint: c.certHint(ve.Reason), Err: ve.Err}
		}
		return refuse(ReasonCertUntrusted, "client certificate could not be verified", err)
	}
	if !c.route.Clients.Allows(id) {
		return &Refusal{Reason: ReasonIdentityNotAllowed, Msg: c.route.Clients.Refusal(id)}
	}
	if err := c.checkUser(); err != nil {
		return err
	}
	if !c.route.IsEnabled() {
		return &Refusal{Reason: ReasonRouteDisabled, Msg: fmt.Sprintf("route %s is disabled by its operator", c.route.Name),
			Hint: "the route accepts connections again once it is enabled"}
	}
	if ref := c.srv.limits.acquire(c.snap.Config.Limits, c.route, c.src.Addr(), c.identity.Serial); ref != nil {
		return ref
	}
	c.admitted = true
	return nil
}

// certHint tells a client without a certificate how to present one, in
// the terms of the route's protocol.
func (c *conn) certHint(r tlsconf.Reason) string {
	switch {
	case r != tlsconf.ReasonCertMissing:
		return ""
	case c.lis.Protocol == config.ProtocolRedis:
		return redisCertHint
	}
	return "libpq: set sslcert and sslkey, or PGSSLCERT and PGSSLKEY; a wrong path is silently ignored by libpq"
}

// recheck returns why the connection may no longer live under snap, or nil.
// It runs the checks of admit that a reload can change (IP rules, CA bundle
// and CRL, allowed identities, user binding, enabled) and reads only what
// was fixed before the connection was listed as admitted, so it is safe to
// call from another goroutine. A route that snap no longer has is not a
// reason: its connections drain.
func (c *conn) recheck(snap *Snapshot) *Refusal {
	r := snap.Route(c.route.Name)
	if r == nil {
		return nil
	}
	if _, ok := r.Matcher.Lookup(c.src.Addr()); !ok {
		return &Refusal{Reason: ReasonIPNotAllowed,
			Msg: fmt.Sprintf("source address %s is no longer allowed for route %s", c.src.Addr(), r.Name)}
	}
	id, err := r.Material.Verify(c.chain, c.srv.now())
	if err != nil {
		var ve *tlsconf.VerifyError
		if errors.As(err, &ve) {
			return &Refusal{Reason: certReason(ve.Reason), Msg: ve.Error(), Err: ve.Err}
		}
		return refuse(ReasonCertUntrusted, "client certificate could not be verified", err)
	}
	if !r.Clients.Allows(id) {
		return &Refusal{Reason: ReasonIdentityNotAllowed, Msg: r.Clients.Refusal(id)}
	}
	if want, ok := boundUser(r, id); ok && c.pgUser != want {
		return &Refusal{Reason: ReasonUserMismatch,
			Msg: fmt.Sprintf("PostgreSQL user %q is no longer the one the client certificate allows (%q)", c.pgUser, want)}
	}
	if !r.IsEnabled() {
		return &Refusal{Reason: ReasonRouteDisabled, Msg: fmt.Sprintf("route %s was disabled by its operator", r.Name)}
	}
	return nil
}

// boundUser returns the PostgreSQL user r allows for id, if r binds one.
func boundUser(r *Route, id tlsconf.Identity) (string, bool) {
	if !r.PostgresUserFromCert || r.Protocol != config.ProtocolPostgres {
		return "", false
	}
	if mapped, ok := r.PostgresUserMap[id.CommonName]; ok {
		return mapped, true
	}
	return id.CommonName, true
}

// checkUser binds the PostgreSQL user to the certificate when the route
// asks for it: the user must be the certificate's CN, or what
// postgres_user_map maps that CN to.
func (c *conn) checkUser() error {
	want, ok := boundUser(c.route, c.identity)
	if !ok || (c.pgUser == want && want != "") {
		return nil
	}
	return &Refusal{
		Reason: ReasonUserMismatch,
		Msg: fmt.Sprintf("PostgreSQL user %q does not match the client certificate (CN %q, serial %s), which allows user %q on route %s",
			c.pgUser, c.identity.CommonName, c.identity.Serial, want, c.route.Name),
		Hint: fmt.Sprintf("connect as user=%s", want),
	}
}
