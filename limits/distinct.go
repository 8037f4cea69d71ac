package limits

import (
	"strings"

	"sluice/conf"
	"sluice/policy"
)

// value is what a distinct rule counts different values of (of = ...).
type value uint8

const (
	ofNone value = iota
	ofRcpt
	ofRcptDomain
	ofClientIP
	ofClientNet
	ofHelo
)

var valueNames = [...]string{"", "rcpt", "rcpt_domain", "client_ip", "client_net", "helo"}

func (v value) String() string { return valueNames[v] }

// stage is the first stage at which the value is known.
func (v value) stage() policy.Stage {
	switch v {
	case ofRcpt, ofRcptDomain:
		return policy.StageRcpt
	case ofHelo:
		return policy.StageHelo
	}
	return policy.StageConnect
}

// A client network, for of = "client_net": the /24 of an IPv4 address,
// the /48 of an IPv6 one (a site; one user's many /64s are one place).
const (
	netBits4 = 24
	netBits6 = 48
)

// compileOf checks of, which only a distinct rule takes, and moves the
// rule's stage to where the value is known.
func (c *rule) compileOf(r *Rule) error {
	if c.count != countDistinct {
		if r.Of != "" {
			return conf.Errorf("of", "only a rule with count = \"distinct\" counts different values of something")
		}
		return nil
	}
	for i, n := range valueNames {
		if i > 0 && n == r.Of {
			c.of = value(i)
		}
	}
	if c.of == ofNone {
		if r.Of == "" {
			return conf.Errorf("of", "missing: different values of what (rcpt, rcpt_domain, client_ip, client_net or helo)?")
		}
		return conf.Errorf("of", "unknown value %q (want rcpt, rcpt_domain, client_ip, client_net or helo)", r.Of)
	}
	c.stage = max(c.stage, c.of.stage())
	return nil
}

// appendMember appends the value a distinct rule counts for f, normalised
// and bounded as a key's values are (a client chooses its recipients and
// HELO name): ok is false when the event has none.
func (c *rule) appendMember(buf []byte, f *policy.Facts) ([]byte, bool) {
	start := len(buf)
	var ok bool
	switch c.of {
	case ofRcpt:
		a := trimPath(f.Rcpt)
		buf, ok = appendAddress(buf, a, c.keyer.stripExtension, true), a != ""
	case ofRcptDomain:
		d := asciiDomain(domainOf(trimPath(f.Rcpt)))
		buf, ok = appendNorm(buf, d, true), d != ""
	case ofClientIP:
		buf, ok = appendPrefix(buf, f.ClientIP, 32, 128)
	case ofClientNet:
		buf, ok = appendPrefix(buf, f.ClientIP, netBits4, netBits6)
	case ofHelo:
		h := asciiDomain(strings.TrimRight(f.Helo, "."))
		buf, ok = appendNorm(buf, h, true), h != ""
	}
	if !ok {
		return buf[:start], false
	}
	return boundValue(buf, start), true
}

// compileDistinctLimit reads a distinct rule's rate: one "N/window", N
// different values within any window.
func (c *rule) compileDistinctLimit(r *Rule) error {
	s, ok := r.Rate.(string)
	switch {
	case r.Rate == nil:
		return conf.Errorf("rate", "missing: how many different %s per window (e.g. rate = \"20/1h\")?", c.of)
	case !ok:
		return conf.Errorf("rate", "a distinct rule takes one rate, a string like \"20/1h\"")
	case r.Burst != 0:
		return conf.Errorf("burst", "a distinct rule admits N different values in any window: it takes no burst")
	case r.MaxRcptPerMessage != 0:
		return conf.Errorf("max_rcpt_per_message", "applies to count = \"recipients\"")
	}
	w, err := parseRate(s, false)
	if err != nil {
		return conf.Errorf("rate", "%v", err)
	}
	c.windows = []window{w}
	c.limit = s
	return nil
}
