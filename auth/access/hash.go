package access

import (
	"fmt"
	"strings"
)

// hashParser reads the text of a hash table: "pattern ACTION [text]"; a
// pattern is looked up whole and by its parents, so every pattern is
// normalised to the form lookups use.
type hashParser struct{ t *Table }

func (p hashParser) line(n int, line string) error {
	t := p.t
	i := strings.IndexAny(line, " \t")
	if i < 0 {
		return fmt.Errorf("%q has no action (want %s)", line, actionList)
	}
	pattern := line[:i]
	if pattern[0] == '/' || strings.HasPrefix(pattern, "!/") {
		return fmt.Errorf("%s is a regexp, which a hash table matches as plain text and never as a pattern: name the file as a regexp table (\"regexp:%s\" in the config, as Postfix's check_%s_access regexp:)", pattern, t.path, kindWord(t.kind))
	}
	e, err := parseResult(strings.TrimSpace(line[i:]), t.kind)
	if err != nil {
		return err
	}
	if e.Pattern, err = normPattern(pattern, t.kind); err != nil {
		return err
	}
	e.Line = n
	if old, ok := t.hash[e.Pattern]; ok {
		return fmt.Errorf("%s is already listed on line %d", e.Pattern, old.Line)
	}
	t.hash[e.Pattern] = e
	t.n++
	return nil
}

func (hashParser) end() error { return nil }

func kindWord(k Kind) string {
	switch k {
	case HELONames:
		return "helo"
	case Clients:
		return "client"
	}
	return "sender"
}

// normPattern checks a pattern and returns it in the form lookups use:
// lower case, no trailing dot.
func normPattern(p string, kind Kind) (string, error) {
	p = strings.ToLower(p)
	if kind == HELONames {
		if strings.Contains(p, "@") {
			return "", fmt.Errorf("%q: a HELO table holds names, not addresses", p)
		}
		if strings.HasPrefix(p, "[") {
			if _, ok := AddressLiteral(p); !ok {
				return "", fmt.Errorf("%q: bad address literal", p)
			}
			return p, nil
		}
		return domainPattern(p)
	}
	if p == "<>" {
		return p, nil
	}
	local, domain, hasAt := cutLast(p, '@')
	if !hasAt {
		return domainPattern(p)
	}
	if local == "" {
		return "", fmt.Errorf("%q: write a domain without the @ (or user@ for a local part at any domain)", p)
	}
	if domain == "" {
		return p, nil // user@
	}
	d, err := domainPattern(domain)
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(d, ".") {
		return "", fmt.Errorf("%q: .domain patterns stand alone, not after user@", p)
	}
	return local + "@" + d, nil
}

func domainPattern(p string) (string, error) {
	p = strings.TrimSuffix(p, ".")
	name := strings.TrimPrefix(p, ".")
	if name == "" {
		return "", fmt.Errorf("%q is not a domain", p)
	}
	for l := range strings.SplitSeq(name, ".") {
		if l == "" || len(l) > 63 {
			return "", fmt.Errorf("%q is not a domain", p)
		}
	}
	return p, nil
}

// cutLast splits an address at its last @, which the domain cannot hold.
func cutLast(s string, c byte) (string, string, bool) {
	i := strings.LastIndexByte(s, c)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+1:], true
}

func (t *Table) lookupSender(addr string) *Entry {
	if addr == "" {
		return t.hash["<>"]
	}
	addr = strings.ToLower(addr)
	local, domain, hasAt := cutLast(addr, '@')
	if !hasAt {
		// An address without a domain only matches itself as a name.
		return t.hash[addr]
	}
	domain = strings.TrimSuffix(domain, ".")
	if e := t.hash[local+"@"+domain]; e != nil {
		return e
	}
	if e := t.lookupDomain(domain); e != nil {
		return e
	}
	return t.hash[local+"@"]
}

func (t *Table) lookupHelo(name string) *Entry {
	name = strings.ToLower(name)
	if strings.HasPrefix(name, "[") {
		return t.hash[name]
	}
	return t.lookupDomain(strings.TrimSuffix(name, "."))
}

func (t *Table) lookupDomain(d string) *Entry {
	if d == "" {
		return nil
	}
	if e := t.hash[d]; e != nil {
		return e
	}
	for i := strings.IndexByte(d, '.'); i >= 0; {
		if e := t.hash[d[i:]]; e != nil {
			return e
		}
		j := strings.IndexByte(d[i+1:], '.')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return nil
}
