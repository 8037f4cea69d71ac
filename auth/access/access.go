// Package access reads Postfix access tables — hash-style lookup tables,
// cidr: and regexp:/pcre: pattern tables — that allow and deny clients,
// HELO names and senders.
package access

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// Action is what an entry asks for.
type Action uint8

const (
	// OK allows: the checks of the table's kind after it are skipped.
	OK Action = iota + 1
	// Reject refuses with a 5xx.
	Reject
	// Tempfail refuses with a 4xx (Postfix's DEFER).
	Tempfail
	// Tag accepts and marks the message in a header.
	Tag
	// Dunno ends the search without an action, so an entry can exempt an
	// address from the entry for its domain.
	Dunno
	// Delay pauses before the answer: a tarpit (client tables only).
	Delay
)

var actionNames = [...]string{OK: "OK", Reject: "REJECT", Tempfail: "TEMPFAIL", Tag: "TAG", Dunno: "DUNNO", Delay: "DELAY"}

// aliases are Postfix's names for the same actions.
var aliases = map[string]Action{"DEFER": Tempfail}

func (a Action) String() string {
	if int(a) < len(actionNames) && actionNames[a] != "" {
		return actionNames[a]
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

const actionList = "OK, REJECT, TEMPFAIL (or DEFER), TAG, DUNNO, DELAY, or a 4xx/5xx code with text"

// Kind is what a table's lookups are about.
type Kind uint8

const (
	// Senders: user@domain, domain, .domain (subdomains), user@, and <>
	// for the null sender.
	Senders Kind = iota
	// HELONames: name, .domain (subdomains), and address literals.
	HELONames
	// Clients: the client's address, and its verified host name in
	// regexp tables.
	Clients
)

// Format is how a table's file is written, named as Postfix names it in
// a restriction ("cidr:/etc/postfix/client_access").
type Format uint8

const (
	// Hash is the text of a Postfix hash: table (what postmap reads):
	// keys looked up whole and by their parents.
	Hash Format = iota
	// CIDR is a cidr: table: networks, first match wins.
	CIDR
	// Regexp is a regexp: table: /pattern/flags, first match wins.
	Regexp
	// PCRE is a pcre: table, read as regexp: with pcre's flags.
	PCRE
)

var formatNames = [...]string{"hash", "cidr", "regexp", "pcre"}

func (f Format) String() string { return formatNames[f] }

// Entry is one entry of a table.
type Entry struct {
	Pattern string // as looked up: lower case for hash tables, as written for pattern tables
	Action  Action
	// Code is the reply code an entry written as "550 text" gives
	// ("550"), and Enhanced the enhanced status code that starts its text
	// ("5.7.1"), if any; "" for the defaults of the action.
	Code     string
	Enhanced string
	Text     string        // what follows the action: the reply text or the tag's note
	Delay    time.Duration // for Delay
	Line     int
}

// Table is a loaded access table.
type Table struct {
	path   string
	kind   Kind
	format Format
	hash   map[string]*Entry // Hash
	rules  []rule            // CIDR, Regexp, PCRE, in file order
	n      int               // entries
}

// ParseSpec splits a table as the config names it — a path, or
// "type:path" as in Postfix's main.cf — into its format and path. A path
// alone is a hash table for senders and HELO names, and a cidr table for
// clients.
func ParseSpec(spec string, kind Kind) (Format, string, error) {
	format := Hash
	if kind == Clients {
		format = CIDR
	}
	path := spec
	if typ, rest, ok := strings.Cut(spec, ":"); ok && !strings.Contains(typ, "/") {
		switch typ {
		case "hash", "texthash":
			format = Hash
		case "cidr":
			format = CIDR
		case "regexp":
			format = Regexp
		case "pcre":
			format = PCRE
		default:
			return 0, "", fmt.Errorf("unknown table type %q (want hash:, cidr:, regexp: or pcre:; for a Postfix map of another type give its source text as hash:)", typ+":")
		}
		path = rest
	}
	if path == "" {
		return 0, "", fmt.Errorf("%q names no file", spec)
	}
	switch {
	case kind == Clients && format == Hash:
		return 0, "", fmt.Errorf("%q: a client table is cidr:, regexp: or pcre: (Postfix's hash: client lookups by address octets are not read; write the networks as a cidr: table)", spec)
	case kind != Clients && format == CIDR:
		return 0, "", fmt.Errorf("%q: a cidr: table matches client addresses; use it in client_access", spec)
	}
	return format, path, nil
}

// Load reads the table a spec names (see ParseSpec). Errors name the
// file and line.
func Load(spec string, kind Kind) (*Table, error) {
	format, path, err := ParseSpec(spec, kind)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("access table: %w", err)
	}
	defer f.Close()
	return Parse(f, path, kind, format)
}

// Parse reads a table in the given format; name stands for it in errors.
//
// Lines are read as Postfix reads its tables: blank lines and lines whose
// first non-blank character is '#' are skipped, and a line that starts
// with a blank continues the one before. A '#' anywhere else is text: on a
// REJECT line it is part of the reply, as Postfix sends it.
func Parse(r io.Reader, name string, kind Kind, format Format) (*Table, error) {
	t := &Table{path: name, kind: kind, format: format}
	var p lineParser
	if format == Hash {
		t.hash = make(map[string]*Entry)
		p = hashParser{t}
	} else {
		p = &patternParser{t: t}
	}
	err := logicalLines(r, name, func(n int, line string) error {
		if err := p.line(n, line); err != nil {
			return fmt.Errorf("%s:%d: %w", name, n, err)
		}
		return nil
	})
	if err == nil {
		err = p.end()
	}
	if err != nil {
		return nil, err
	}
	return t, nil
}

// lineParser reads a table's logical lines, each with the number of the
// line it starts on, then hears that the file ended.
type lineParser interface {
	line(n int, s string) error
	end() error
}

// maxLine bounds one logical line; a longer one is an error, not a cut.
const maxLine = 64 << 10

// logicalLines calls f with each logical line of r and the number of the
// line it starts on (Postfix's readlline).
func logicalLines(r io.Reader, name string, f func(n int, line string) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	var cur strings.Builder
	start, n := 0, 0
	flush := func() error {
		if cur.Len() == 0 {
			return nil
		}
		s := cur.String()
		cur.Reset()
		return f(start, s)
	}
	for sc.Scan() {
		n++
		line := strings.TrimRight(sc.Text(), " \t\r")
		trimmed := strings.TrimLeft(line, " \t")
		if trimmed == "" || trimmed[0] == '#' {
			continue
		}
		if len(trimmed) < len(line) {
			if cur.Len() == 0 {
				return fmt.Errorf("%s:%d: a line that starts with a blank continues the line before, and there is none (remove the blanks)", name, n)
			}
			if cur.Len()+len(line) > maxLine {
				return fmt.Errorf("%s:%d: logical line longer than %d bytes", name, n, maxLine)
			}
			// Postfix keeps the blanks; one space keeps the reply text
			// free of tabs.
			cur.WriteByte(' ')
			cur.WriteString(trimmed)
			continue
		}
		if err := flush(); err != nil {
			return err
		}
		start = n
		cur.WriteString(line)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("%s:%d: line longer than %d bytes", name, n+1, maxLine)
		}
		return fmt.Errorf("%s:%d: %w", name, n+1, err)
	}
	return flush()
}

// parseResult reads the result column of an entry: the action, then its
// text.
func parseResult(result string, kind Kind) (*Entry, error) {
	word, text := result, ""
	if i := strings.IndexAny(result, " \t"); i >= 0 {
		word, text = result[:i], result[i+1:]
	}
	text = strings.TrimSpace(text)
	if word == "" {
		return nil, fmt.Errorf("no action (want %s)", actionList)
	}
	for i := 0; i < len(text); i++ {
		if c := text[i]; c < 0x20 || c == 0x7f {
			return nil, fmt.Errorf("control character in the text")
		}
	}
	e := &Entry{Text: text}
	if code, ok := replyCode(word); ok {
		e.Code = code
		e.Action = Reject
		if code[0] == '4' {
			e.Action = Tempfail
		}
		if enh, rest := cutEnhanced(text); enh != "" {
			if enh[0] != code[0] {
				return nil, fmt.Errorf("%s %s: the enhanced status code does not match the reply code (%cxx needs %c.x.x)", code, enh, code[0], code[0])
			}
			e.Enhanced, e.Text = enh, rest
		}
		return e, nil
	}
	up := strings.ToUpper(word)
	a, ok := aliases[up]
	if !ok {
		for i, n := range actionNames {
			if n != "" && n == up {
				a, ok = Action(i), true
			}
		}
	}
	if !ok {
		return nil, fmt.Errorf("unknown action %q (want %s)", word, actionList)
	}
	e.Action = a
	switch a {
	case OK, Dunno:
		if text != "" {
			return nil, fmt.Errorf("%s takes no text (found %q); '#' starts a comment only at the start of a line, as in Postfix", word, text)
		}
	case Delay:
		if kind != Clients {
			return nil, fmt.Errorf("DELAY is for client tables (client_access): a tarpit pauses the client at connect")
		}
		d, err := parseDelay(text)
		if err != nil {
			return nil, err
		}
		e.Delay, e.Text = d, ""
	}
	return e, nil
}

// parseDelay reads DELAY's pause: a Go duration ("15s", "500ms") or whole
// seconds, as Postfix's sleep takes them.
func parseDelay(s string) (time.Duration, error) {
	if s == "" {
		return 0, fmt.Errorf("DELAY needs a pause, e.g. DELAY 15s")
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		n, nerr := strconv.Atoi(s)
		if nerr != nil {
			return 0, fmt.Errorf("DELAY %q: want a pause such as 15s or 500ms", s)
		}
		d = time.Duration(n) * time.Second
	}
	if d <= 0 {
		return 0, fmt.Errorf("DELAY %q: the pause must be positive", s)
	}
	return d, nil
}

// cutEnhanced splits an enhanced status code ("5.7.1") off the start of
// a reply text.
func cutEnhanced(text string) (string, string) {
	word, rest, _ := strings.Cut(text, " ")
	f := strings.Split(word, ".")
	if len(f) != 3 || len(f[0]) != 1 || f[0][0] < '2' || f[0][0] > '5' {
		return "", text
	}
	for _, n := range f[1:] {
		if n == "" || len(n) > 3 || strings.Trim(n, "0123456789") != "" {
			return "", text
		}
	}
	return word, strings.TrimSpace(rest)
}

// replyCode reports whether word is a 4xx or 5xx SMTP reply code.
func replyCode(word string) (string, bool) {
	if len(word) != 3 || word[0] != '4' && word[0] != '5' {
		return "", false
	}
	for i := 1; i < 3; i++ {
		if word[i] < '0' || word[i] > '9' {
			return "", false
		}
	}
	return word, true
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

// Path is the file the table was read from.
func (t *Table) Path() string { return t.path }

// Format is how the table's file is written.
func (t *Table) Format() Format { return t.format }

// Entries returns the entries: in file order for pattern tables, in no
// particular order for hash tables.
func (t *Table) Entries() []*Entry {
	out := make([]*Entry, 0, t.n)
	for _, e := range t.hash {
		out = append(out, e)
	}
	for i := range t.rules {
		if e := t.rules[i].entry; e != nil {
			out = append(out, e)
		}
	}
	return out
}

// Len is the number of entries.
func (t *Table) Len() int { return t.n }

// Lookup finds the entry for a sender address ("" is the null sender) or a
// HELO name, depending on the table's kind. A hash table is searched in
// Postfix's order: for a sender, the address, its domain, each parent
// domain as .domain, then user@; for a HELO name, the name then its
// parents. A pattern table is matched against the whole address ("<>"
// for the null sender) or name, first match first. The first entry found
// decides; a DUNNO entry is reported as not found.
func (t *Table) Lookup(s string) (*Entry, bool) {
	if t == nil {
		return nil, false
	}
	var e *Entry
	switch {
	case t.format != Hash:
		if t.kind == Senders && s == "" {
			s = "<>"
		}
		e = t.match(s, netip.Addr{})
	case t.kind == HELONames:
		e = t.lookupHelo(s)
	default:
		e = t.lookupSender(s)
	}
	return found(e)
}

// LookupClient finds the entry for a client: a cidr table by its address;
// a regexp table by its verified host name (none for Postfix's "unknown"
// or Sendmail's "[192.0.2.7]"), then by its address's text, as Postfix's
// check_client_access asks a pattern table.
func (t *Table) LookupClient(ip netip.Addr, name string) (*Entry, bool) {
	if t == nil {
		return nil, false
	}
	ip = ip.Unmap().WithZone("")
	if t.format == CIDR {
		if !ip.IsValid() {
			return nil, false
		}
		return found(t.match("", ip))
	}
	if name != "" && name != "unknown" && name[0] != '[' {
		if e := t.match(name, netip.Addr{}); e != nil {
			return found(e)
		}
	}
	if !ip.IsValid() {
		return nil, false
	}
	return found(t.match(ip.String(), netip.Addr{}))
}

func found(e *Entry) (*Entry, bool) {
	if e == nil || e.Action == Dunno {
		return nil, false
	}
	return e, true
}
