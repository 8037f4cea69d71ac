package limits

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"sluice/policy"
)

// dim is one dimension a rule counts per.
type dim uint8

const (
	dimClientIP dim = iota
	dimSender
	dimSenderDomain
	dimSASLUser
	dimHelo
	dimRcpt
	dimRcptDomain
	dimListener
)

var dimNames = [...]string{"client_ip", "sender", "sender_domain", "sasl_user", "helo", "rcpt", "rcpt_domain", "listener"}

func (d dim) String() string { return dimNames[d] }

// stage is the first stage at which the dimension's value is known.
func (d dim) stage() policy.Stage {
	switch d {
	case dimClientIP, dimListener:
		return policy.StageConnect
	case dimHelo:
		return policy.StageHelo
	case dimRcpt, dimRcptDomain:
		return policy.StageRcpt
	}
	return policy.StageMail
}

func parseDim(s string) (dim, error) {
	for i, n := range dimNames {
		if n == s {
			return dim(i), nil
		}
	}
	return 0, fmt.Errorf("unknown key %q (want client_ip, sender, sender_domain, sasl_user, helo, rcpt, rcpt_domain or listener)", s)
}

// keyer builds a rule's dimension key ("sender:alice@example.org",
// "client_ip:2001:db8:1:2::/64", "sasl_user:bob,rcpt_domain:gmail.com")
// into a caller's buffer, so a check allocates nothing.
type keyer struct {
	dims           []dim
	ipv4Prefix     int
	ipv6Prefix     int
	stripExtension bool
	countNull      bool // null sender counted as "<>" rather than skipped
}

// appendKey appends the key for f to buf. ok is false when a dimension has
// no value (no client IP, not authenticated, null sender skipped, no HELO):
// the rule does not apply to that event.
func (k *keyer) appendKey(buf []byte, f *policy.Facts) (out []byte, ok bool) {
	for i, d := range k.dims {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, dimNames[d]...)
		buf = append(buf, ':')
		if buf, ok = k.appendValue(buf, d, f); !ok {
			return buf, false
		}
	}
	return buf, true
}

func (k *keyer) appendValue(buf []byte, d dim, f *policy.Facts) ([]byte, bool) {
	switch d {
	case dimClientIP:
		return appendPrefix(buf, f.ClientIP, k.ipv4Prefix, k.ipv6Prefix)
	case dimSender, dimSenderDomain:
		if f.Sender == "" {
			if !k.countNull {
				return buf, false
			}
			return append(buf, "<>"...), true
		}
		if d == dimSender {
			return appendAddress(buf, f.Sender, k.stripExtension)
		}
		return appendLower(buf, domainOf(f.Sender)), domainOf(f.Sender) != ""
	case dimRcpt:
		return appendAddress(buf, f.Rcpt, k.stripExtension)
	case dimRcptDomain:
		return appendLower(buf, domainOf(f.Rcpt)), domainOf(f.Rcpt) != ""
	case dimSASLUser:
		return appendLower(buf, f.SASLUser), f.SASLUser != ""
	case dimHelo:
		h := strings.TrimSuffix(f.Helo, ".")
		return appendLower(buf, h), h != ""
	case dimListener:
		return append(buf, f.Listener...), f.Listener != ""
	}
	return buf, false
}

// appendPrefix writes the client's address, or its network when the rule
// aggregates: one IPv6 host owns a whole /64 and must not escape a limit by
// rotating addresses inside it. IPv4-mapped IPv6 counts as IPv4; zones are
// dropped.
func appendPrefix(buf []byte, ip netip.Addr, v4, v6 int) ([]byte, bool) {
	if !ip.IsValid() {
		return buf, false
	}
	ip = ip.Unmap().WithZone("")
	bits := v6
	if ip.Is4() {
		bits = v4
	}
	if bits >= ip.BitLen() {
		return ip.AppendTo(buf), true
	}
	p, err := ip.Prefix(bits)
	if err != nil {
		return buf, false
	}
	return p.AppendTo(buf), true
}

// appendAddress writes a lower-cased address, without its +extension when
// asked. The whole address is folded, not just the domain: local parts are
// case-sensitive in theory, but a limit that Alice@ and alice@ can split is
// one a spammer walks around.
func appendAddress(buf []byte, a string, strip bool) ([]byte, bool) {
	if a == "" {
		return buf, false
	}
	if strip {
		at := strings.LastIndexByte(a, '@')
		local := a
		if at >= 0 {
			local = a[:at]
		}
		if plus := strings.IndexByte(local, '+'); plus > 0 {
			buf = appendLower(buf, local[:plus])
			if at >= 0 {
				buf = appendLower(buf, a[at:])
			}
			return buf, true
		}
	}
	return appendLower(buf, a), true
}

func domainOf(a string) string {
	if at := strings.LastIndexByte(a, '@'); at >= 0 {
		return strings.TrimSuffix(a[at+1:], ".")
	}
	return ""
}

func appendLower(buf []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= utf8.RuneSelf {
			return append(buf, strings.ToLower(s[i:])...)
		}
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf = append(buf, c)
	}
	return buf
}
