package proxy

import (
	"errors"
	"fmt"

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
	id, err := c.route.Material.Verify(c.tlsConn.ConnectionState().PeerCertificates, c.srv.now())
	c.identity = id
	if err != nil {
		var ve *tlsconf.VerifyError
		if errors.As(err, &ve) {
			c.identity = ve.Identity
			return &Refusal{Reason: certReason(ve.Reason), Msg: ve.Error(), Err: ve.Err}
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
	if !c.srv.acquireSlot(c.snap.Config.Limits.MaxConnections) {
		return &Refusal{Reason: ReasonTooManyConnections, Msg: "too many connections through this gate", Hint: "try again later"}
	}
	c.admitted = true
	return nil
}

// checkUser binds the PostgreSQL user to the certificate when the route
// asks for it: the user must be the certificate's CN, or what
// postgres_user_map maps that CN to.
func (c *conn) checkUser() error {
	if !c.route.PostgresUserFromCert || c.route.Protocol != ProtocolPostgres {
		return nil
	}
	want := c.identity.CommonName
	if mapped, ok := c.route.PostgresUserMap[want]; ok {
		want = mapped
	}
	if c.pgUser == want && want != "" {
		return nil
	}
	return &Refusal{
		Reason: ReasonUserMismatch,
		Msg: fmt.Sprintf("PostgreSQL user %q does not match the client certificate (CN %q, serial %s), which allows user %q on route %s",
			c.pgUser, c.identity.CommonName, c.identity.Serial, want, c.route.Name),
		Hint: fmt.Sprintf("connect as user=%s", want),
	}
}
