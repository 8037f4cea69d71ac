package access

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
)

// rule is one line of a pattern table: an entry, or an "if" that opens a
// block (entry nil). Lines are tried in file order; the first entry whose
// pattern matches (or, negated with '!', does not) decides, and a block
// is skipped whole when its "if" does not hold.
type rule struct {
	neg   bool
	re    *regexp.Regexp // regexp and pcre tables
	net   netip.Prefix   // cidr tables
	entry *Entry
	skip  int // an if: the index of the rule after its endif

	run *netRun // a cidr table's run of plain entries that starts here
}

// netRun indexes a run of plain cidr entries (no '!', no if between them)
// so that a country-sized table costs a map probe per prefix length, not
// a comparison per network: the first entry of the run that contains an
// address is the one of least index among the networks of its prefixes.
type netRun struct {
	end   int                  // the index after the run
	first map[netip.Prefix]int // network -> its first index
	bits  []int                // the prefix lengths the run holds, longest first
}

// minRun is the length from which a run is indexed.
const minRun = 16

func (r *netRun) lookup(ip netip.Addr) (int, bool) {
	best := -1
	for _, b := range r.bits {
		if b > ip.BitLen() {
			continue
		}
		p, err := ip.Prefix(b)
		if err != nil {
			continue
		}
		if i, ok := r.first[p]; ok && (best < 0 || i < best) {
			best = i
		}
	}
	return best, best >= 0
}

// indexRuns finds the runs of plain cidr entries worth an index. A run
// ends where a block opened by an if ends, so that skipping a block never
// lands inside one.
func (t *Table) indexRuns() {
	ends := make(map[int]bool)
	for i := range t.rules {
		if t.rules[i].entry == nil {
			ends[t.rules[i].skip] = true
		}
	}
	plain := func(i int) bool { r := &t.rules[i]; return r.entry != nil && !r.neg }
	for i := 0; i < len(t.rules); {
		if !plain(i) {
			i++
			continue
		}
		j := i + 1
		for j < len(t.rules) && plain(j) && !ends[j] {
			j++
		}
		if j-i >= minRun {
			run := &netRun{end: j, first: make(map[netip.Prefix]int, j-i)}
			lengths := make(map[int]bool)
			for k := i; k < j; k++ {
				n := t.rules[k].net
				if _, ok := run.first[n]; !ok {
					run.first[n] = k
				}
				lengths[n.Bits()] = true
			}
			for b := range lengths {
				run.bits = append(run.bits, b)
			}
			slices.Sort(run.bits)
			slices.Reverse(run.bits)
			t.rules[i].run = run
		}
		i = j
	}
}

func (r *rule) holds(s string, ip netip.Addr) bool {
	var m bool
	if r.re != nil {
		m = r.re.MatchString(s)
	} else {
		m = r.net.Contains(ip)
	}
	return m != r.neg
}

// match returns the first entry of a pattern table for s (regexp tables)
// or ip (cidr tables), nil for none.
func (t *Table) match(s string, ip netip.Addr) *Entry {
	for i := 0; i < len(t.rules); {
		r := &t.rules[i]
		if r.run != nil {
			if k, ok := r.run.lookup(ip); ok {
				return t.rules[k].entry
			}
			i = r.run.end
			continue
		}
		switch {
		case r.entry == nil && r.holds(s, ip):
			i++
		case r.entry == nil:
			i = r.skip
		case r.holds(s, ip):
			return r.entry
		default:
			i++
		}
	}
	return nil
}

// patternParser reads a cidr, regexp or pcre table, Postfix's
// cidr_table(5), regexp_table(5) and pcre_table(5):
//
//	pattern result
//	!pattern result
//	if pattern
//	endif
//
// where a pattern is a network for cidr tables and /regexp/flags (any
// punctuation may stand for the slashes) for the others.
type patternParser struct {
	t    *Table
	open []int // indexes of the ifs not yet closed
	ifAt []int // their lines
}

func (p *patternParser) line(n int, line string) error {
	t := p.t
	if line == "endif" {
		if len(p.open) == 0 {
			return fmt.Errorf("endif without if")
		}
		last := len(p.open) - 1
		t.rules[p.open[last]].skip = len(t.rules)
		p.open, p.ifAt = p.open[:last], p.ifAt[:last]
		return nil
	}
	cond := false
	if rest, ok := strings.CutPrefix(line, "if"); ok && (rest == "" || rest[0] == ' ' || rest[0] == '\t') {
		cond, line = true, strings.TrimSpace(rest)
		if line == "" {
			return fmt.Errorf("if without a pattern")
		}
	}
	var r rule
	if line[0] == '!' {
		r.neg, line = true, line[1:]
	}
	var pattern, result string
	var err error
	if t.format == CIDR {
		pattern, result = cutField(line)
		r.net, err = parseNetwork(pattern)
	} else {
		pattern, result, err = cutRegexp(line)
		if err == nil {
			r.re, err = compileRegexp(pattern, t.format)
		}
	}
	if err != nil {
		return err
	}
	if r.neg {
		pattern = "!" + pattern
	}
	if cond {
		if result != "" {
			return fmt.Errorf("if %s: an if line takes no result (found %q)", pattern, result)
		}
		p.open, p.ifAt = append(p.open, len(t.rules)), append(p.ifAt, n)
		t.rules = append(t.rules, r)
		return nil
	}
	if result == "" {
		return fmt.Errorf("%s has no action (want %s)", pattern, actionList)
	}
	e, err := parseResult(result, t.kind)
	if err != nil {
		return err
	}
	if t.format != CIDR {
		if e.Text, err = noSubstitution(e.Text); err != nil {
			return err
		}
	}
	e.Pattern, e.Line = pattern, n
	r.entry = e
	t.rules = append(t.rules, r)
	t.n++
	return nil
}

func (p *patternParser) end() error {
	if len(p.open) > 0 {
		return fmt.Errorf("%s:%d: if without endif", p.t.path, p.ifAt[len(p.ifAt)-1])
	}
	if p.t.format == CIDR {
		p.t.indexRuns()
	}
	return nil
}

// cutField splits a line at its first blank.
func cutField(s string) (string, string) {
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		return s, ""
	}
	return s[:i], strings.TrimSpace(s[i:])
}

// parseNetwork reads a cidr table's pattern: a network, or one address;
// IPv6 may be written in brackets. Host bits must be zero, as Postfix
// wants them.
func parseNetwork(s string) (netip.Prefix, error) {
	bare := s
	if strings.HasPrefix(bare, "[") {
		addr, bits, _ := strings.Cut(bare[1:], "]")
		bare = addr + bits
	}
	if !strings.Contains(bare, "/") {
		a, err := netip.ParseAddr(bare)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q is not a network or an address", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(bare)
	if err != nil || p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q is not a network or an address", s)
	}
	if p != p.Masked() {
		return netip.Prefix{}, fmt.Errorf("network %q has bits set past /%d; did you mean %s?", s, p.Bits(), p.Masked())
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		// Clients are compared unmapped.
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p, nil
}

// cutRegexp splits "/pattern/flags result" into the pattern as written
// (with its delimiters and flags) and the result. The delimiter is the
// first character, any punctuation; a backslash keeps the next character
// from ending the pattern.
func cutRegexp(s string) (pattern, result string, err error) {
	d := s[0]
	if !isDelimiter(d) {
		return "", "", fmt.Errorf("%q: a pattern is written between delimiters, /like this/", s)
	}
	i := 1
	for ; i < len(s) && s[i] != d; i++ {
		if s[i] == '\\' {
			i++
		}
	}
	if i >= len(s) {
		return "", "", fmt.Errorf("%q: no closing %c", s, d)
	}
	end := strings.IndexAny(s[i:], " \t")
	if end < 0 {
		return s, "", nil
	}
	return s[:i+end], strings.TrimSpace(s[i+end:]), nil
}

func isDelimiter(c byte) bool {
	return c > ' ' && c < 0x7f && c != '\\' && c != '!' &&
		!(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9')
}

// compileRegexp compiles a pattern written as cutRegexp returned it. As
// in Postfix, matching ignores case unless the i flag says otherwise.
// Go's RE2 takes POSIX extended and most Perl syntax, and matches in time
// linear in the input whatever the client sends; what it cannot do (look-
// around, back-references, pcre's x) is an error, never a silent miss.
func compileRegexp(written string, format Format) (*regexp.Regexp, error) {
	d := written[0]
	end := strings.LastIndexByte(written, d)
	expr, flags := written[1:end], written[end+1:]
	fold, multi, dotall, ungreedy, anchored := true, false, false, false, false
	for _, f := range flags {
		switch {
		case f == 'i':
			fold = !fold
		case f == 'm':
			multi = !multi
		case f == 'x' && format == Regexp:
			return nil, fmt.Errorf("%s: flag x (POSIX basic syntax) is not supported: sluice reads extended syntax only", written)
		case f == 'x':
			return nil, fmt.Errorf("%s: flag x (extended, free-spacing syntax) is not supported by Go's RE2: remove the blanks and comments from the pattern", written)
		case format == PCRE && f == 's':
			dotall = !dotall
		case format == PCRE && f == 'U':
			ungreedy = !ungreedy
		case format == PCRE && f == 'A':
			anchored = true
		case format == PCRE && (f == 'E' || f == 'X'):
			// $ matches only at the end, and unknown escapes are errors:
			// what RE2 does anyway.
		default:
			return nil, fmt.Errorf("%s: unknown flag %q for a %s table", written, f, format)
		}
	}
	var b strings.Builder
	if fold || multi || dotall || ungreedy {
		b.WriteString("(?")
		for _, f := range []struct {
			on bool
			c  byte
		}{{fold, 'i'}, {multi, 'm'}, {dotall, 's'}, {ungreedy, 'U'}} {
			if f.on {
				b.WriteByte(f.c)
			}
		}
		b.WriteString(")")
	}
	if anchored {
		b.WriteString(`\A(?:` + expr + ")")
	} else {
		b.WriteString(expr)
	}
	re, err := regexp.Compile(b.String())
	if err != nil {
		return nil, fmt.Errorf("%s: Go's RE2 cannot compile it (no look-around or back-references): %v", written, err)
	}
	return re, nil
}

// noSubstitution checks a pattern table's result text: Postfix fills in
// $1 and the like from the match, which sluice does not, so they are an
// error rather than text sent as written; $$ is one $.
func noSubstitution(text string) (string, error) {
	if !strings.Contains(text, "$") {
		return text, nil
	}
	var b strings.Builder
	for i := 0; i < len(text); i++ {
		if text[i] != '$' {
			b.WriteByte(text[i])
			continue
		}
		if i+1 < len(text) && text[i+1] == '$' {
			b.WriteByte('$')
			i++
			continue
		}
		if i+1 < len(text) && (text[i+1] >= '0' && text[i+1] <= '9' || text[i+1] == '{' || text[i+1] == '(') {
			return "", fmt.Errorf("%q: substitution of matched text ($1, ${1}) is not supported; write $$ for a $", text)
		}
		b.WriteByte('$')
	}
	return b.String(), nil
}
