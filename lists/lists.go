// Package lists holds the named lists rules match against — client networks,
// domains, addresses and patterns — written inline or kept in files.
package lists

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"regexp"
	"regexp/syntax"
	"sort"
	"strings"

	"sluice/conf"
)

// List is a compiled set of entries. The zero value and nil match nothing.
// Entries, by their form:
//
//	192.0.2.0/24, 2001:db8::/32, 192.0.2.7   networks and addresses
//	example.com                              that domain exactly
//	.example.com                             every subdomain of example.com
//	alice@example.com                        that address (case-insensitive)
//	/^mx[0-9]+\./                            a regexp (Go syntax, case-insensitive)
type List struct {
	Name     string
	ranges   []ipRange // sorted, merged
	domains  map[string]struct{}
	suffixes map[string]struct{} // ".example.com"
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
	l, err := Read(name, path, f)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", name, err)
	}
	return l, nil
}

// maxLine bounds one line of a list file; a longer one is an error, not
// a silent cut.
const maxLine = 64 << 10

// Read parses a list file's content; path names it in errors
// ("/etc/sluice/jp.cidr:12: ..."). Blank lines and lines starting with
// '#' are skipped, and '#' starts a comment after an entry. A regexp
// entry runs from its first '/' to the last '/' that only blanks or a
// comment follow, so a pattern may hold '#' and '/' itself.
func Read(name, path string, r io.Reader) (*List, error) {
	var entries []string
	var lines []int
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	n := 0
	for sc.Scan() {
		n++
		e, err := entry(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		if e != "" {
			entries = append(entries, e)
			lines = append(lines, n)
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("%s:%d: line longer than %d bytes", path, n+1, maxLine)
		}
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return Parse(name, entries, func(i int) string { return fmt.Sprintf("%s:%d", path, lines[i]) })
}

// entry is the entry on one line of a list file, "" for none.
func entry(line string) (string, error) {
	line = strings.TrimSpace(line)
	if line == "" || line[0] == '#' {
		return "", nil
	}
	if line[0] == '/' {
		for end := len(line) - 1; end > 0; end-- {
			if line[end] != '/' {
				continue
			}
			if rest := strings.TrimSpace(line[end+1:]); rest == "" || rest[0] == '#' {
				return line[:end+1], nil
			}
		}
		return "", fmt.Errorf("regexp %q has no closing /", line)
	}
	if i := strings.IndexByte(line, '#'); i >= 0 {
		line = strings.TrimSpace(line[:i])
	}
	if f := strings.Fields(line); len(f) > 1 {
		return "", fmt.Errorf("one entry a line: %q has %d (a Postfix table's result column has no meaning here)", line, len(f))
	}
	return line, nil
}

func (l *List) add(e string) error {
	switch {
	case e == "":
		return fmt.Errorf("empty entry")
	case e[0] == '/':
		if len(e) < 3 || e[len(e)-1] != '/' {
			return fmt.Errorf("regexp %q: write it between slashes, /like this/", e)
		}
		// RE2: matching time is linear in the input, whatever the client sends.
		re, err := regexp.Compile("(?i)" + e[1:len(e)-1])
		if err != nil {
			return fmt.Errorf("bad regexp %s: %s", conf.Clip(e), RegexpWhy(err))
		}
		l.res = append(l.res, re)
	case strings.Contains(e, "@"):
		local, domain, _ := strings.Cut(e, "@")
		if local == "" || strings.ContainsAny(e, " \t") || strings.Contains(domain, "@") {
			return fmt.Errorf("bad address %q", e)
		}
		if err := checkDomain(domain); err != nil {
			return fmt.Errorf("address %q: %w", e, err)
		}
		if l.addrs == nil {
			l.addrs = make(map[string]struct{})
		}
		l.addrs[strings.ToLower(strings.TrimSuffix(e, "."))] = struct{}{}
	case strings.Contains(e, "/"):
		p, err := netip.ParsePrefix(e)
		if err != nil {
			return fmt.Errorf("bad network %q: %s", e, parseWhy(err))
		}
		if p.Addr().Zone() != "" {
			return fmt.Errorf("network %q: zones have no meaning here", e)
		}
		if p != p.Masked() {
			return fmt.Errorf("network %q has bits set past /%d; did you mean %s?", e, p.Bits(), p.Masked())
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			// ::ffff:192.0.2.0/120 is 192.0.2.0/24: clients are compared unmapped.
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		l.ranges = append(l.ranges, ipRange{p.Addr(), lastAddr(p)})
	default:
		if a, err := netip.ParseAddr(e); err == nil {
			a = a.Unmap().WithZone("")
			l.ranges = append(l.ranges, ipRange{a, a})
			return nil
		}
		suffix := strings.HasPrefix(e, ".")
		d := strings.TrimSuffix(strings.TrimPrefix(e, "."), ".")
		if err := checkDomain(d); err != nil {
			return err
		}
		d = strings.ToLower(d)
		if suffix {
			if l.suffixes == nil {
				l.suffixes = make(map[string]struct{})
			}
			l.suffixes["."+d] = struct{}{}
			return nil
		}
		if l.domains == nil {
			l.domains = make(map[string]struct{})
		}
		l.domains[d] = struct{}{}
	}
	return nil
}

// checkDomain refuses what cannot be a domain name, so that a mistyped
// address or network ("192.0.2.300", "10.0.0.0-8") is an error rather
// than a domain that never matches.
func checkDomain(d string) error {
	if d == "" {
		return fmt.Errorf("empty domain")
	}
	if len(d) > 253 {
		return fmt.Errorf("domain %.20q... is longer than 253 characters", d)
	}
	numeric := true
	for _, label := range strings.Split(d, ".") {
		if label == "" {
			return fmt.Errorf("%q: empty label: is neither a network, an address, a domain nor a /regexp/", d)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case c >= '0' && c <= '9':
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '-', c == '_', c >= 0x80:
				numeric = false
			default:
				return fmt.Errorf("%q is neither a network, an address, a domain nor a /regexp/", d)
			}
		}
	}
	if numeric {
		return fmt.Errorf("%q is not a valid IP address", d)
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
	return l.hasDomain(d) || l.matchRE(d)
}

// hasDomain looks d and each of its parents up: one map probe per label,
// however many suffixes the list holds.
func (l *List) hasDomain(d string) bool {
	if _, ok := l.domains[d]; ok {
		return true
	}
	if len(l.suffixes) == 0 {
		return false
	}
	for i := 1; i < len(d); i++ {
		if d[i] == '.' {
			if _, ok := l.suffixes[d[i:]]; ok {
				return true
			}
		}
	}
	return false
}

// MatchAddress reports whether address a is listed, its domain matches as
// in MatchDomain, or the whole address matches a regexp.
func (l *List) MatchAddress(a string) bool {
	if l == nil || a == "" {
		return false
	}
	la := strings.TrimSuffix(strings.ToLower(a), ".")
	if _, ok := l.addrs[la]; ok {
		return true
	}
	if at := strings.LastIndexByte(la, '@'); at >= 0 && l.hasDomain(la[at+1:]) {
		return true
	}
	return l.matchRE(a)
}

// MatchHost reports whether a client's host name matches as a domain.
// The names MTAs give for a client without a verified PTR name —
// "unknown" (Postfix) and "[192.0.2.7]" (Sendmail) — never match.
func (l *List) MatchHost(name string) bool {
	if name == "" || name == "unknown" || name[0] == '[' {
		return false
	}
	return l.MatchDomain(name)
}

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

// Union is one list holding every entry of ls (nil lists are skipped), so
// that a rule's except or the global trusted list can name lists and give
// inline entries together and still be one lookup.
func Union(name string, ls ...*List) *List {
	u := &List{Name: name}
	for _, l := range ls {
		if l == nil {
			continue
		}
		u.ranges = append(u.ranges, l.ranges...)
		u.domains = mergeSet(u.domains, l.domains)
		u.suffixes = mergeSet(u.suffixes, l.suffixes)
		u.addrs = mergeSet(u.addrs, l.addrs)
		u.res = append(u.res, l.res...)
	}
	u.ranges = merge(u.ranges)
	return u
}

func mergeSet(dst, src map[string]struct{}) map[string]struct{} {
	if len(src) == 0 {
		return dst
	}
	if dst == nil {
		dst = make(map[string]struct{}, len(src))
	}
	for k := range src {
		dst[k] = struct{}{}
	}
	return dst
}

// RegexpWhy is what a regexp compile error says without the pattern,
// which the caller quotes (clipped) itself: "missing closing )".
func RegexpWhy(err error) string {
	var se *syntax.Error
	if errors.As(err, &se) {
		return string(se.Code)
	}
	return err.Error()
}

// parseWhy is what a net/netip parse error says, without the call it
// quotes ("netip.ParsePrefix(...): "): a config error speaks of the
// entry, not of Go.
func parseWhy(err error) string {
	s := err.Error()
	if _, why, ok := strings.Cut(s, "): "); ok {
		return why
	}
	return s
}
