package auth

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// The SPF library evaluates a record term by term and stops at the first
// match, so a syntax error after it goes unseen; RFC 7208 §4.6 wants
// permerror for a syntax error anywhere in the record, before anything is
// evaluated. recordSyntax checks the record of the domain being checked
// against the grammar of RFC 7208 §12 first. (Records reached through
// include and redirect are still left to the library.)

// recordSyntax returns why the SPF record of domain is malformed, or "" if
// it is not, or if it cannot be fetched (the library then says why).
func (c *Checker) recordSyntax(ctx context.Context, domain string) string {
	txts, err := c.res.LookupTXT(ctx, domain)
	if err != nil {
		return ""
	}
	var rec string
	n := 0
	for _, t := range txts {
		if isSPFRecord(t) {
			rec = t
			n++
		}
	}
	if n != 1 {
		return "" // none, or several: the library's permerror
	}
	if err := checkRecord(rec); err != nil {
		return "syntax error in the SPF record of " + domain + ": " + err.Error()
	}
	return ""
}

func isSPFRecord(t string) bool {
	return len(t) >= 6 && strings.EqualFold(t[:6], "v=spf1") && (len(t) == 6 || t[6] == ' ')
}

var modifierName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9._-]*=`)

// checkRecord checks a record against RFC 7208 §12:
//
//	record = version terms *SP ; terms = *( 1*SP ( directive / modifier ) )
func checkRecord(rec string) error {
	seen := map[string]bool{}
	for _, term := range strings.Split(rec[6:], " ") {
		if term == "" {
			continue
		}
		for i := 0; i < len(term); i++ {
			if c := term[i]; c < 0x21 || c > 0x7e {
				return fmt.Errorf("character %#x in %q", c, term)
			}
		}
		if m := modifierName.FindString(term); m != "" {
			name := strings.ToLower(m[:len(m)-1])
			value := term[len(m):]
			switch name {
			case "redirect", "exp":
				if seen[name] {
					return fmt.Errorf("%s= appears twice", name)
				}
				seen[name] = true
				if err := checkDomainSpec(value); err != nil {
					return fmt.Errorf("%s=%s: %w", name, value, err)
				}
			default:
				if err := checkMacroString(value); err != nil {
					return fmt.Errorf("%q: %w", term, err)
				}
			}
			continue
		}
		if err := checkDirective(term); err != nil {
			return fmt.Errorf("%q: %w", term, err)
		}
	}
	return nil
}

// dualCIDR splits a trailing [ "/" ip4-cidr ] [ "//" ip6-cidr ] off a term.
var dualCIDR = regexp.MustCompile(`^(.*?)(?:/([0-9]+))?(?://([0-9]+))?$`)

func checkDirective(term string) error {
	if strings.ContainsRune("+-?~", rune(term[0])) {
		term = term[1:]
	}
	name, rest := term, ""
	if i := strings.IndexAny(term, ":/"); i >= 0 {
		name, rest = term[:i], term[i:]
	}
	switch strings.ToLower(name) {
	case "all":
		if rest != "" {
			return fmt.Errorf("all takes no argument")
		}
	case "include", "exists":
		if !strings.HasPrefix(rest, ":") {
			return fmt.Errorf("%s needs :domain", name)
		}
		return checkDomainSpec(rest[1:])
	case "ptr":
		if rest == "" {
			return nil
		}
		if !strings.HasPrefix(rest, ":") {
			return fmt.Errorf("ptr takes no CIDR length")
		}
		return checkDomainSpec(rest[1:])
	case "a", "mx":
		m := dualCIDR.FindStringSubmatch(rest)
		spec, v4, v6 := m[1], m[2], m[3]
		if err := checkCIDR(v4, 32); err != nil {
			return err
		}
		if err := checkCIDR(v6, 128); err != nil {
			return err
		}
		if spec == "" {
			return nil
		}
		if !strings.HasPrefix(spec, ":") {
			return fmt.Errorf("bad argument %q", rest)
		}
		return checkDomainSpec(spec[1:])
	case "ip4", "ip6":
		if !strings.HasPrefix(rest, ":") {
			return fmt.Errorf("%s needs :network", name)
		}
		network, cidr, hasCIDR := strings.Cut(rest[1:], "/")
		ip, err := netip.ParseAddr(network)
		if err != nil || ip.Zone() != "" || ip.Is4() != (strings.ToLower(name) == "ip4") {
			return fmt.Errorf("bad %s network %q", name, network)
		}
		if hasCIDR {
			if cidr == "" {
				return fmt.Errorf("empty CIDR length")
			}
			return checkCIDR(cidr, ip.BitLen())
		}
	default:
		return fmt.Errorf("unknown mechanism")
	}
	return nil
}

// checkCIDR checks a CIDR length: no leading zero, at most max.
func checkCIDR(s string, max int) error {
	if s == "" {
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n > max || len(s) > 1 && s[0] == '0' {
		return fmt.Errorf("bad CIDR length /%s", s)
	}
	return nil
}

// checkDomainSpec checks domain-spec = macro-string domain-end, where
// domain-end = ( "." toplabel [ "." ] ) / macro-expand. A trailing dot
// after a macro is let through: records in the wild have it.
func checkDomainSpec(s string) error {
	if s == "" {
		return fmt.Errorf("empty domain")
	}
	if err := checkMacroString(s); err != nil {
		return err
	}
	t := strings.TrimSuffix(s, ".")
	if endsWithMacro(t) {
		return nil
	}
	i := strings.LastIndexByte(t, '.')
	if i < 0 || !toplabel(t[i+1:]) {
		return fmt.Errorf("%q does not end in a valid top-level label", s)
	}
	return nil
}

func endsWithMacro(s string) bool {
	if strings.HasSuffix(s, "}") {
		return true
	}
	// %%, %_ and %- are macro-expands too; count the %s before the last
	// character to know whether it is escaped.
	if len(s) < 2 || !strings.ContainsRune("%_-", rune(s[len(s)-1])) {
		return false
	}
	n := 0
	for i := len(s) - 2; i >= 0 && s[i] == '%'; i-- {
		n++
	}
	return n%2 == 1
}

// toplabel = ( *alphanum ALPHA *alphanum ) /
//
//	( 1*alphanum "-" *( alphanum / "-" ) alphanum )
func toplabel(l string) bool {
	if l == "" || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	alpha, hyphen := false, false
	for i := 0; i < len(l); i++ {
		switch c := l[i]; {
		case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
			alpha = true
		case c >= '0' && c <= '9':
		case c == '-':
			hyphen = true
		default:
			return false
		}
	}
	return alpha || hyphen
}

// checkMacroString checks macro-string = *( macro-expand / macro-literal ).
// The letters c, r and t belong to explanation text only (§7.1), which is
// fetched and expanded later, never here.
func checkMacroString(s string) error {
	const letters = "slodiphv"
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			if c < 0x21 || c > 0x7e {
				return fmt.Errorf("character %#x", c)
			}
			continue
		}
		if i+1 == len(s) {
			return fmt.Errorf("%% at the end")
		}
		i++
		switch s[i] {
		case '%', '_', '-':
			continue
		case '{':
		default:
			return fmt.Errorf("%%%c is no macro", s[i])
		}
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return fmt.Errorf("unclosed macro")
		}
		if err := checkMacro(s[i+1:i+end], letters); err != nil {
			return err
		}
		i += end
	}
	return nil
}

// checkMacro checks the inside of %{...}: macro-letter transformers
// *delimiter, transformers = *DIGIT [ "r" ].
func checkMacro(m, letters string) error {
	if m == "" || !strings.ContainsRune(letters, rune(strings.ToLower(m[:1])[0])) {
		return fmt.Errorf("bad macro %%{%s}", m)
	}
	rest := m[1:]
	digits := 0
	for digits < len(rest) && rest[digits] >= '0' && rest[digits] <= '9' {
		digits++
	}
	if digits > 0 {
		if n, err := strconv.Atoi(rest[:digits]); err != nil || n == 0 {
			return fmt.Errorf("bad macro %%{%s}", m)
		}
	}
	rest = rest[digits:]
	if rest != "" && (rest[0] == 'r' || rest[0] == 'R') {
		rest = rest[1:]
	}
	for i := 0; i < len(rest); i++ {
		if !strings.ContainsRune(".-+,/_=", rune(rest[i])) {
			return fmt.Errorf("bad macro %%{%s}", m)
		}
	}
	return nil
}
