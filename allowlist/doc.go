// Package allowlist holds the IP rules of one route: the YAML rules file
// model, its strict parser and validator, and the [Matcher] that answers,
// on every new connection, whether the client's source address is inside
// one of the rules.
//
// A rules file looks like this:
//
//	rules:
//	  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4
//	    cidr: 1.2.3.4/32
//	    description: My Office IP
//	    created_at: 2019-07-17T00:05:52Z
//	    updated_at: 2019-07-17T00:05:52Z   # optional
//
// An empty file, or one that says "rules: []", is valid and grants no access:
// a [Matcher] built from no rules matches nothing. The package fails closed
// everywhere: a nil *Matcher matches nothing, and [Parse] and [Load] return
// no rules at all when any part of the file is wrong.
//
// [Parse] reports every problem of a file at once, each as a [*ParseError]
// naming the line, joined with [errors.Join]. To list them one by one:
//
//	if u, ok := err.(interface{ Unwrap() []error }); ok {
//		for _, e := range u.Unwrap() {
//			fmt.Println(e)
//		}
//	}
//
// Parse, Load, NewMatcher and ParseCIDR keep no state and may be called from
// many goroutines at once. A Matcher is immutable and safe for concurrent
// use; to change the rules of a route, build a new Matcher and swap it in.
//
// Addresses and blocks are normalised the same way everywhere: an
// IPv4-mapped IPv6 address (::ffff:10.1.2.3) is treated as the IPv4 address
// it carries, and an IPv4-mapped block (::ffff:10.0.0.0/104) as the IPv4
// block (10.0.0.0/8). After that, IPv4 addresses match only IPv4 rules and
// IPv6 addresses only IPv6 rules, so ::/0 does not admit IPv4 clients.
package allowlist
