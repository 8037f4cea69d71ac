// Package access reads tables that allow and deny senders or HELO names in
// one file, with the patterns of Postfix's check_sender_access tables.
package access

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
)

// Action is what an entry asks for.
type Action uint8

const (
	// OK allows: the checks after the table are skipped for the message.
	OK Action = iota + 1
	// Reject refuses with a 5xx.
	Reject
	// Tempfail refuses with a 4xx.
	Tempfail
	// Tag accepts and marks the message in a header.
	Tag
	// Dunno ends the search without an action, so an entry can exempt an
	// address from the entry for its domain.
	Dunno
)

var actionNames = map[string]Action{"OK": OK, "REJECT": Reject, "TEMPFAIL": Tempfail, "TAG": Tag, "DUNNO": Dunno}

func (a Action) String() string {
	for n, v := range actionNames {
		if v == a {
			return n
		}
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// Kind is what a table's patterns are about.
type Kind uint8

const (
	// Senders: user@domain, domain, .domain (subdomains), user@, and <>
	// for the null sender.
	Senders Kind = iota
	// HELONames: name, .domain (subdomains), and address literals.
	HELONames
)

// Entry is one line of a table.
type Entry struct {
	Pattern string
	Action  Action
	Text    string // what follows the action: the reply text or the tag's note
	Line    int
}

// Table is a loaded access table.
type Table struct {
	path    string
	kind    Kind
	entries map[string]*Entry
}

// Load reads a table file. Errors name the file and line.
func Load(path string, kind Kind) (*Table, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("access table: %w", err)
	}
	defer f.Close()
	return Parse(f, path, kind)
}

// Parse reads a table: one "pattern ACTION [text]" a line, blank lines and
// lines starting with # ignored. name is used in errors.
func Parse(r io.Reader, name string, kind Kind) (*Table, error) {
	t := &Table{path: name, kind: kind, entries: make(map[string]*Entry)}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 64*1024)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		e, err := parseLine(line, kind)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, n, err)
		}
		e.Line = n
		if old, ok := t.entries[e.Pattern]; ok {
			return nil, fmt.Errorf("%s:%d: %s is already listed on line %d", name, n, e.Pattern, old.Line)
		}
		t.entries[e.Pattern] = e
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s:%d: %w", name, n+1, err)
	}
	return t, nil
}

func parseLine(line string, kind Kind) (*Entry, error) {
	fields := strings.Fields(line)
	pattern, word := fields[0], ""
	rest := strings.TrimSpace(line[len(pattern):])
	if len(fields) > 1 {
		word = fields[1]
	}
	text := strings.TrimSpace(rest[len(word):])
	if word == "" {
		return nil, fmt.Errorf("%q has no action (want OK, REJECT, TEMPFAIL, TAG or DUNNO)", pattern)
	}
	a, ok := actionNames[strings.ToUpper(word)]
	if !ok {
		return nil, fmt.Errorf("unknown action %q (want OK, REJECT, TEMPFAIL, TAG or DUNNO)", word)
	}
	if text != "" && (a == OK || a == Dunno) {
		return nil, fmt.Errorf("%s takes no text (found %q)", word, text)
	}
	for i := 0; i < len(text); i++ {
		if c := text[i]; c < 0x20 || c == 0x7f {
			return nil, fmt.Errorf("control character in the text")
		}
	}
	p, err := normPattern(pattern, kind)
	if err != nil {
		return nil, err
	}
	return &Entry{Pattern: p, Action: a, Text: text}, nil
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

// AddressLiteral reads an SMTP address literal (RFC 5321 §4.1.3):
// "[192.0.2.1]" or "[IPv6:2001:db8::1]".
func AddressLiteral(s string) (netip.Addr, bool) {
	if len(s) < 3 || s[0] != '[' || s[len(s)-1] != ']' {
		return netip.Addr{}, false
	}
	inner := s[1 : len(s)-1]
	if len(inner) > 5 && strings.EqualFold(inner[:5], "ipv6:") {
		ip, err := netip.ParseAddr(inner[5:])
		return ip, err == nil && ip.Is6() && ip.Zone() == ""
	}
	ip, err := netip.ParseAddr(inner)
	return ip, err == nil && ip.Is4()
}

// cutLast splits an address at its last @, which the domain cannot hold.
func cutLast(s string, c byte) (string, string, bool) {
	i := strings.LastIndexByte(s, c)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+1:], true
}

// Path is the file the table was read from.
func (t *Table) Path() string { return t.path }

// Entries returns the entries in no particular order.
func (t *Table) Entries() []*Entry {
	out := make([]*Entry, 0, len(t.entries))
	for _, e := range t.entries {
		out = append(out, e)
	}
	return out
}

// Len is the number of entries.
func (t *Table) Len() int { return len(t.entries) }

// Lookup finds the entry for a sender address ("" is the null sender) or a
// HELO name, depending on the table's kind. The search order is Postfix's:
// for a sender, the address, its domain, each parent domain as .domain,
// then user@; for a HELO name, the name then its parents. The first entry
// found decides; a DUNNO entry is reported as not found.
func (t *Table) Lookup(s string) (*Entry, bool) {
	if t == nil {
		return nil, false
	}
	var e *Entry
	if t.kind == HELONames {
		e = t.lookupHelo(s)
	} else {
		e = t.lookupSender(s)
	}
	if e == nil || e.Action == Dunno {
		return nil, false
	}
	return e, true
}

func (t *Table) lookupSender(addr string) *Entry {
	if addr == "" {
		return t.entries["<>"]
	}
	addr = strings.ToLower(addr)
	local, domain, hasAt := cutLast(addr, '@')
	if !hasAt {
		// An address without a domain only matches itself as a name.
		return t.entries[addr]
	}
	domain = strings.TrimSuffix(domain, ".")
	if e := t.entries[local+"@"+domain]; e != nil {
		return e
	}
	if e := t.lookupDomain(domain); e != nil {
		return e
	}
	return t.entries[local+"@"]
}

func (t *Table) lookupHelo(name string) *Entry {
	name = strings.ToLower(name)
	if strings.HasPrefix(name, "[") {
		return t.entries[name]
	}
	return t.lookupDomain(strings.TrimSuffix(name, "."))
}

func (t *Table) lookupDomain(d string) *Entry {
	if d == "" {
		return nil
	}
	if e := t.entries[d]; e != nil {
		return e
	}
	for i := strings.IndexByte(d, '.'); i >= 0; {
		if e := t.entries[d[i:]]; e != nil {
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
