// Package lists holds the named lists rules match against — client networks,
// domains, addresses and patterns — written inline or kept in files.
package lists

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strings"
)

// List is a compiled set of entries. The zero value and nil match nothing.
// Entries, by their form:
//
//	192.0.2.0/24, 2001:db8::/32, 192.0.2.7   networks and addresses
//	example.com                              that domain exactly
//	.example.com                             every subdomain of example.com
//	alice@example.com                        that address (case-insensitive)
//	/^mx[0-9]+\./                            a regexp (Go syntax), matched against the value
type List struct {
	Name     string
	ranges   []ipRange // sorted, merged
	domains  map[string]struct{}
	suffixes []string // ".example.com"
	addrs    map[string]struct{}
	res      []*regexp.Regexp
}

type ipRange struct{ lo, hi netip.Addr }

// Parse compiles entries. where names the origin of entry i for errors,
// e.g. "jp.cidr:12"; nil gives "entry i".
func Parse(name string, entries []string, where func(i int) string) (*List, error) {
	l := &List{Name: name}
	for i, e := range entries {
		if err := l.add(strings.TrimSpace(e)); err != nil {
			loc := fmt.Sprintf("entry %d", i+1)
			if where != nil {
				loc = where(i)
			}
			return nil, fmt.Errorf("%s: %w", loc, err)
		}
	}
	l.ranges = merge(l.ranges)
	return l, nil
}

// Load reads a list file: one entry a line, '#' starts a comment.
func Load(name, path string) (*List, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", name, err)
	}
	defer f.Close()
	var entries []string
	var lines []int
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 && !strings.HasPrefix(strings.TrimSpace(line), "/") {
			line = line[:i]
		}
		if line = strings.TrimSpace(line); line != "" {
			entries = append(entries, line)
			lines = append(lines, n)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("list %s: read %s: %w", name, path, err)
	}
	return Parse(name, entries, func(i int) string { return fmt.Sprintf("%s:%d", path, lines[i]) })
}

func (l *List) add(e string) error {
	switch {
	case e == "":
		return fmt.Errorf("empty entry")
	case len(e) >= 2 && e[0] == '/' && e[len(e)-1] == '/':
		re, err := regexp.Compile(e[1 : len(e)-1])
		if err != nil {
			return fmt.Errorf("bad regexp %s: %w", e, err)
		}
		l.res = append(l.res, re)
	case strings.Contains(e, "/"):
		p, err := netip.ParsePrefix(e)
		if err != nil {
			return fmt.Errorf("bad network %q: %w", e, err)
		}
		p = p.Masked()
		l.ranges = append(l.ranges, ipRange{p.Addr(), lastAddr(p)})
	case strings.Contains(e, "@"):
		if l.addrs == nil {
			l.addrs = make(map[string]struct{})
		}
		l.addrs[strings.ToLower(e)] = struct{}{}
	default:
		if a, err := netip.ParseAddr(e); err == nil {
			a = a.Unmap()
			l.ranges = append(l.ranges, ipRange{a, a})
			return nil
		}
		if strings.ContainsAny(e, " \t:[]") || strings.Trim(e, ".") == "" {
			return fmt.Errorf("%q is neither a network, an address, a domain nor a /regexp/", e)
		}
		e = strings.ToLower(e)
		if strings.HasPrefix(e, ".") {
			l.suffixes = append(l.suffixes, e)
			return nil
		}
		if l.domains == nil {
			l.domains = make(map[string]struct{})
		}
		l.domains[strings.TrimSuffix(e, ".")] = struct{}{}
	}
	return nil
}

// HasNetworks reports whether the list holds networks or addresses.
func (l *List) HasNetworks() bool { return l != nil && len(l.ranges) > 0 }

// ContainsIP reports whether ip is in one of the list's networks, or
// matches one of its regexps in text form. IPv4-mapped IPv6 counts as IPv4.
func (l *List) ContainsIP(ip netip.Addr) bool {
	if l == nil || !ip.IsValid() {
		return false
	}
	ip = ip.Unmap().WithZone("")
	r := l.ranges
	i := sort.Search(len(r), func(i int) bool { return ip.Less(r[i].lo) })
	if i > 0 && r[i-1].lo.BitLen() == ip.BitLen() && !r[i-1].hi.Less(ip) {
		return true
	}
	return len(l.res) > 0 && l.matchRE(ip.String())
}

// MatchDomain reports whether domain d (any case, trailing dot allowed) is
// listed exactly, is under a listed .suffix, or matches a regexp.
func (l *List) MatchDomain(d string) bool {
	if l == nil || d == "" {
		return false
	}
	d = strings.TrimSuffix(strings.ToLower(d), ".")
	if _, ok := l.domains[d]; ok {
		return true
	}
	for _, s := range l.suffixes {
		if strings.HasSuffix(d, s) {
			return true
		}
	}
	return l.matchRE(d)
}

// MatchAddress reports whether address a is listed, its domain matches as
// in MatchDomain, or the whole address matches a regexp.
func (l *List) MatchAddress(a string) bool {
	if l == nil || a == "" {
		return false
	}
	la := strings.ToLower(a)
	if _, ok := l.addrs[la]; ok {
		return true
	}
	if at := strings.LastIndexByte(la, '@'); at >= 0 {
		d := la[at+1:]
		if _, ok := l.domains[d]; ok {
			return true
		}
		for _, s := range l.suffixes {
			if strings.HasSuffix(d, s) {
				return true
			}
		}
	}
	return l.matchRE(a)
}

// MatchString reports whether s equals a listed domain (case-insensitive)
// or matches a regexp: for HELO names.
func (l *List) MatchString(s string) bool { return l.MatchDomain(s) }

func (l *List) matchRE(s string) bool {
	for _, re := range l.res {
		if re.MatchString(s) {
			return true
		}
	}
	return false
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// merge sorts ranges and joins overlapping or adjacent ones, so that a
// lookup is one binary search however many networks a country table holds.
func merge(rs []ipRange) []ipRange {
	if len(rs) < 2 {
		return rs
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].lo.Less(rs[j].lo) })
	out := rs[:1]
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		if r.lo.BitLen() == last.hi.BitLen() && (!last.hi.Less(r.lo) || last.hi.Next() == r.lo) {
			if last.hi.Less(r.hi) {
				last.hi = r.hi
			}
			continue
		}
		out = append(out, r)
	}
	return out
}
