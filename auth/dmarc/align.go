package dmarc

import (
	"strings"

	"golang.org/x/net/idna"
	"golang.org/x/net/publicsuffix"
)

// Mode is an alignment mode: adkim and aspf.
type Mode byte

const (
	Relaxed Mode = 'r'
	Strict  Mode = 's'
)

func (m Mode) String() string {
	if m == Strict {
		return "strict"
	}
	return "relaxed"
}

// NormalizeDomain is a domain as DMARC compares it: lower case, without
// a trailing dot, an internationalised name in its A-label form. It
// returns "" for what cannot be a domain name.
func NormalizeDomain(d string) string {
	d = strings.TrimSuffix(d, ".")
	if d == "" || len(d) > 253 {
		return ""
	}
	ascii := true
	for i := 0; i < len(d); i++ {
		if d[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if !ascii {
		a, err := idna.Lookup.ToASCII(d)
		if err != nil {
			return ""
		}
		d = a
	}
	d = strings.ToLower(d)
	for l := range strings.SplitSeq(d, ".") {
		if l == "" || len(l) > 63 {
			return ""
		}
		for i := 0; i < len(l); i++ {
			if c := l[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return ""
			}
		}
	}
	return d
}

// OrgDomain is the organizational domain of d (RFC 7489 §3.2): the public
// suffix under which d lies and one label more, by the public suffix list
// (the copy golang.org/x/net/publicsuffix carries). A public suffix
// itself, or a name the list cannot place, is its own organizational
// domain. d must be normalized.
func OrgDomain(d string) string {
	org, err := publicsuffix.EffectiveTLDPlusOne(d)
	if err != nil {
		return d
	}
	return org
}

// Aligned reports whether an authenticated domain (the SPF mailfrom
// domain, a DKIM d=) is aligned with the From domain: the same name in
// strict mode, the same organizational domain in relaxed mode (RFC 7489
// §3.1). Both must be normalized; an empty one is never aligned.
func Aligned(from, authenticated string, m Mode) bool {
	if from == "" || authenticated == "" {
		return false
	}
	if from == authenticated {
		return true
	}
	if m == Strict {
		return false
	}
	return OrgDomain(from) == OrgDomain(authenticated)
}
