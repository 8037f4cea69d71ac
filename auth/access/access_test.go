package access

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const senders = `
# partners whose mail always goes through
partner.example        OK
.partner.example       OK
boss@corp.example      OK

corp.example           REJECT Spoofed sender
.spam.example          REJECT
noreply@               TEMPFAIL  try later please
newsletter.example     TAG	bulk mail
exempt@spam.example    DUNNO
<>                     TAG null sender
`

func parse(t *testing.T, text string, kind Kind, format Format) *Table {
	t.Helper()
	tab, err := Parse(strings.NewReader(text), "t", kind, format)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

func TestSenderLookup(t *testing.T) {
	tab := parse(t, senders, Senders, Hash)
	for _, tc := range []struct {
		addr   string
		action Action // 0: no entry
		text   string
	}{
		{"a@partner.example", OK, ""},
		{"a@mx.partner.example", OK, ""},
		{"a@deep.mx.PARTNER.example", OK, ""},
		{"boss@corp.example", OK, ""},
		{"Boss@Corp.Example", OK, ""},
		{"other@corp.example", Reject, "Spoofed sender"},
		{"other@sub.corp.example", 0, ""}, // corp.example does not match subdomains
		{"x@spam.example", 0, ""},         // .spam.example matches only subdomains
		{"x@a.spam.example", Reject, ""},
		{"exempt@spam.example", 0, ""}, // DUNNO
		{"noreply@anything.example", Tempfail, "try later please"},
		{"noreply@corp.example", Reject, "Spoofed sender"}, // domain before user@
		{"x@newsletter.example", Tag, "bulk mail"},
		{"", Tag, "null sender"},
		{"x@partner.example.evil", 0, ""},
		{"x@evilpartner.example", 0, ""},
		{"partner.example", OK, ""}, // no @: matched as a name
		{"x@corp.example.", Reject, "Spoofed sender"},
	} {
		e, ok := tab.Lookup(tc.addr)
		if ok != (tc.action != 0) || ok && (e.Action != tc.action || e.Text != tc.text) {
			t.Errorf("Lookup(%q) = %+v, %v; want %v %q", tc.addr, e, ok, tc.action, tc.text)
		}
	}
}

func TestHeloLookup(t *testing.T) {
	tab := parse(t, "mx.example OK\n.dyn.example REJECT dynamic host\n[192.0.2.1] REJECT that is me\n[IPv6:2001:db8::1] TAG\n", HELONames, Hash)
	for _, tc := range []struct {
		helo   string
		action Action
	}{
		{"mx.example", OK},
		{"MX.example.", OK},
		{"a.mx.example", 0},
		{"host1.dyn.example", Reject},
		{"[192.0.2.1]", Reject},
		{"[ipv6:2001:db8::1]", Tag},
		{"[192.0.2.2]", 0},
		{"", 0},
	} {
		e, ok := tab.Lookup(tc.helo)
		if ok != (tc.action != 0) || ok && e.Action != tc.action {
			t.Errorf("Lookup(%q) = %+v, %v; want %v", tc.helo, e, ok, tc.action)
		}
	}
}

// Lines are Postfix's: '#' starts a comment only where a line starts
// (blanks before it allowed), a line that starts with a blank continues
// the one before, and a '#' after an entry is text.
func TestLogicalLines(t *testing.T) {
	tab := parse(t, `# a comment
  # an indented comment
spam.example  REJECT Known spam source # internal: added after the 2009 complaint
corp.example  REJECT this text
	goes on here
# a comment between does not end the entry
    and here
`, Senders, Hash)
	e, _ := tab.Lookup("a@spam.example")
	if e.Text != "Known spam source # internal: added after the 2009 complaint" {
		t.Errorf("text after '#': %q, want it kept, as Postfix sends it", e.Text)
	}
	e, _ = tab.Lookup("a@corp.example")
	if e == nil || e.Text != "this text goes on here and here" || e.Line != 4 {
		t.Errorf("continued entry: %+v", e)
	}
	if tab.Len() != 2 {
		t.Errorf("%d entries, want 2", tab.Len())
	}
}

// Postfix's own words and reply codes: DEFER, and "550 text".
func TestPostfixResults(t *testing.T) {
	tab := parse(t, "a.example DEFER later\nb.example 554 5.7.1 go away\nc.example 450 busy\n", Senders, Hash)
	for _, tc := range []struct {
		addr, code, text string
		action           Action
	}{
		{"x@a.example", "", "later", Tempfail},
		{"x@b.example", "554", "go away", Reject},
		{"x@c.example", "450", "busy", Tempfail},
	} {
		e, ok := tab.Lookup(tc.addr)
		if !ok || e.Action != tc.action || e.Code != tc.code || e.Text != tc.text || tc.code == "554" && e.Enhanced != "5.7.1" {
			t.Errorf("Lookup(%q) = %+v; want %v %q %q", tc.addr, e, tc.action, tc.code, tc.text)
		}
	}
}

func TestErrorsNameLine(t *testing.T) {
	for _, tc := range []struct {
		text   string
		kind   Kind
		format Format
		want   string
	}{
		{"a.example OK\nb.example\n", Senders, Hash, "t:2: \"b.example\" has no action"},
		{"a.example ALLOW\n", Senders, Hash, "t:1: unknown action \"ALLOW\""},
		{"a.example OK\n\n# c\nA.example. REJECT\n", Senders, Hash, "t:4: a.example is already listed on line 1"},
		{"@a.example OK\n", Senders, Hash, "t:1: \"@a.example\": write a domain without the @"},
		{"a..example OK\n", Senders, Hash, "t:1: \"a..example\" is not a domain"},
		{"x@.a.example OK\n", Senders, Hash, "t:1: \"x@.a.example\": .domain patterns stand alone"},
		{"a.example OK but why\n", Senders, Hash, "t:1: OK takes no text"},
		{".partner.example  OK  # its subdomains\n", Senders, Hash, "'#' starts a comment only at the start of a line"},
		{"x@a.example REJECT\n", HELONames, Hash, "t:1: \"x@a.example\": a HELO table holds names"},
		{"[300.1.1.1] REJECT\n", HELONames, Hash, "t:1: \"[300.1.1.1]\": bad address literal"},
		{"ok.example OK\n/jp-good\\.example$/ REJECT\n", HELONames, Hash, `t:2: /jp-good\.example$/ is a regexp, which a hash table matches as plain text`},
		{"  a.example OK\n", Senders, Hash, "t:1: a line that starts with a blank continues the line before, and there is none"},
		{"a.example DELAY 5s\n", Senders, Hash, "t:1: DELAY is for client tables"},
		{"a.example 450 5.7.1 later\n", Senders, Hash, "t:1: 450 5.7.1: the enhanced status code does not match"},
		{"192.0.2.0/24 DELAY\n", Clients, CIDR, "t:1: DELAY needs a pause"},
		{"192.0.2.0/24 DELAY soon\n", Clients, CIDR, "t:1: DELAY \"soon\""},
		{"192.0.2.7/24 REJECT\n", Clients, CIDR, "t:1: network \"192.0.2.7/24\" has bits set past /24; did you mean 192.0.2.0/24?"},
		{"192.0.2.0/33 REJECT\n", Clients, CIDR, "t:1: \"192.0.2.0/33\" is not a network"},
		{"example.com REJECT\n", Clients, CIDR, "t:1: \"example.com\" is not a network"},
		{"192.0.2.0/24\n", Clients, CIDR, "t:1: 192.0.2.0/24 has no action"},
		{"if 192.0.2.0/24\n10.0.0.0/8 OK\n", Clients, CIDR, "t:1: if without endif"},
		{"endif\n", Clients, CIDR, "t:1: endif without if"},
		{"if 192.0.2.0/24 OK\nendif\n", Clients, CIDR, "t:1: if 192.0.2.0/24: an if line takes no result"},
		{"/a(?<=b)/ REJECT\n", HELONames, Regexp, "t:1: /a(?<=b)/: Go's RE2 cannot compile it"},
		{"/(a)\\1/ REJECT\n", HELONames, Regexp, "t:1: /(a)\\1/: Go's RE2 cannot compile it"},
		{"/a/x REJECT\n", HELONames, Regexp, "t:1: /a/x: flag x (POSIX basic syntax) is not supported"},
		{"/a/x REJECT\n", HELONames, PCRE, "t:1: /a/x: flag x (extended, free-spacing syntax) is not supported"},
		{"/a/s REJECT\n", HELONames, Regexp, "t:1: /a/s: unknown flag 's' for a regexp table"},
		{"/a/ REJECT\n/b REJECT\n", HELONames, Regexp, "t:2: \"/b REJECT\": no closing /"},
		{"a REJECT\n", HELONames, Regexp, "t:1: \"a REJECT\": a pattern is written between delimiters"},
		{"/(.*)\\.example$/ REJECT $1 is not welcome\n", HELONames, Regexp, "t:1: \"$1 is not welcome\": substitution of matched text"},
		{"/a/\n", HELONames, Regexp, "t:1: /a/ has no action"},
	} {
		_, err := Parse(strings.NewReader(tc.text), "t", tc.kind, tc.format)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %q: error %v, want %q", tc.format, tc.text, err, tc.want)
		}
	}
}

// A cidr table: networks and addresses, IPv4 and IPv6, first match wins,
// "!" negates, if/endif blocks.
func TestCIDRLookup(t *testing.T) {
	tab := parse(t, `
192.0.2.7           OK
192.0.2.0/24        REJECT  Known spam network
2001:db8::/32       TAG     doc network
[2001:db8:1::1]     OK
198.51.100.0/24     DUNNO
198.51.100.0/22     REJECT
::ffff:203.0.113.0/120 TEMPFAIL
if 10.0.0.0/8
!10.1.0.0/16        DELAY 15s
endif
10.0.0.0/8          OK
`, Clients, CIDR)
	for _, tc := range []struct {
		ip     string
		action Action
		line   int
	}{
		{"192.0.2.7", OK, 2},
		{"192.0.2.8", Reject, 3},
		{"::ffff:192.0.2.8", Reject, 3},
		{"2001:db8:5::1", Tag, 4},
		{"2001:db8:1::1", Tag, 4}, // the /32 comes first
		{"198.51.100.9", 0, 0},    // DUNNO stops the search
		{"198.51.101.9", Reject, 7},
		{"203.0.113.5", Tempfail, 8},
		{"10.2.3.4", Delay, 10},
		{"10.1.3.4", OK, 12},
		{"203.0.114.1", 0, 0},
	} {
		e, ok := tab.LookupClient(netip.MustParseAddr(tc.ip), "ignored.example")
		if ok != (tc.action != 0) || ok && (e.Action != tc.action || e.Line != tc.line) {
			t.Errorf("LookupClient(%s) = %+v, %v; want %v at line %d", tc.ip, e, ok, tc.action, tc.line)
		}
	}
	e, _ := tab.LookupClient(netip.MustParseAddr("10.2.3.4"), "")
	if e.Delay != 15*time.Second {
		t.Errorf("DELAY 15s: %v", e.Delay)
	}
	if _, ok := tab.LookupClient(netip.Addr{}, "x"); ok {
		t.Error("a client without an address matched a cidr table")
	}
}

// A regexp table matches as Postfix's regexp: does: the whole name,
// ignoring case unless the i flag says otherwise, first match first.
func TestRegexpLookup(t *testing.T) {
	tab := parse(t, `
/jp-good\.example$/      REJECT  bad neighbourhood
/^Mixed\.Example$/i      TAG
if !/\./
/./                      REJECT  a HELO needs a dot
endif
#/any/ OK
|^[0-9.]+$|              REJECT  a bare address
`, HELONames, Regexp)
	for _, tc := range []struct {
		helo   string
		action Action
		text   string
	}{
		{"mail1.jp-good.example", Reject, "bad neighbourhood"},
		{"MAIL1.JP-GOOD.EXAMPLE", Reject, "bad neighbourhood"},
		{"jp-good.example.net", 0, ""},
		{"Mixed.Example", Tag, ""},
		{"mixed.example", 0, ""}, // i toggles case-insensitivity off
		{"localhost", Reject, "a HELO needs a dot"},
		{"192.0.2.1", Reject, "a bare address"},
		{"mx.example.org", 0, ""},
	} {
		e, ok := tab.Lookup(tc.helo)
		if ok != (tc.action != 0) || ok && (e.Action != tc.action || e.Text != tc.text) {
			t.Errorf("Lookup(%q) = %+v, %v; want %v %q", tc.helo, e, ok, tc.action, tc.text)
		}
	}
}

// A sender regexp table sees the whole address, and the null sender as
// "<>"; a client regexp table sees the verified name, then the address.
func TestRegexpSendersAndClients(t *testing.T) {
	s := parse(t, "/^<>$/ TAG bounce\n/@partner\\.example$/ OK\n/^postmaster@/ DUNNO\n/example$/ REJECT cost $$5\n", Senders, Regexp)
	for _, tc := range []struct {
		addr   string
		action Action
	}{
		{"", Tag},
		{"a@partner.example", OK},
		{"postmaster@x.example", 0},
		{"a@x.example", Reject},
	} {
		e, ok := s.Lookup(tc.addr)
		if ok != (tc.action != 0) || ok && e.Action != tc.action {
			t.Errorf("sender %q: %+v, %v; want %v", tc.addr, e, ok, tc.action)
		}
	}
	if e, _ := s.Lookup("a@x.example"); e.Text != "cost $5" {
		t.Errorf("$$ in text: %q", e.Text)
	}
	c := parse(t, "/\\.dyn\\.example$/ REJECT dynamic\n/^192\\.0\\.2\\./ TAG doc\n", Clients, PCRE)
	for _, tc := range []struct {
		ip, name string
		action   Action
	}{
		{"198.51.100.1", "host1.dyn.example", Reject},
		{"192.0.2.1", "host1.dyn.example", Reject}, // the name first
		{"192.0.2.1", "mx.example", Tag},
		{"192.0.2.1", "unknown", Tag},
		{"198.51.100.1", "[198.51.100.1]", 0},
	} {
		e, ok := c.LookupClient(netip.MustParseAddr(tc.ip), tc.name)
		if ok != (tc.action != 0) || ok && e.Action != tc.action {
			t.Errorf("client %s %s: %+v, %v; want %v", tc.ip, tc.name, e, ok, tc.action)
		}
	}
}

// pcre's flags that RE2 can follow: A anchors, U makes quantifiers lazy,
// s lets . match a newline.
func TestPCREFlags(t *testing.T) {
	tab := parse(t, "/mail/A REJECT\n/a.b/s TAG\n/x(.+)y/U DUNNO\n", HELONames, PCRE)
	if _, ok := tab.Lookup("mail.example"); !ok {
		t.Error("A: mail.example")
	}
	if _, ok := tab.Lookup("smail.example"); ok {
		t.Error("A matched away from the start")
	}
	if e, ok := tab.Lookup("a\nb"); !ok || e.Action != Tag {
		t.Error("s: a newline")
	}
}

func TestParseSpec(t *testing.T) {
	for _, tc := range []struct {
		spec   string
		kind   Kind
		format Format
		path   string
		err    string
	}{
		{"/etc/sluice/senders", Senders, Hash, "/etc/sluice/senders", ""},
		{"hash:/etc/postfix/senders", Senders, Hash, "/etc/postfix/senders", ""},
		{"texthash:/etc/postfix/senders", Senders, Hash, "/etc/postfix/senders", ""},
		{"regexp:/etc/postfix/helo", HELONames, Regexp, "/etc/postfix/helo", ""},
		{"pcre:/etc/postfix/helo", HELONames, PCRE, "/etc/postfix/helo", ""},
		{"/etc/sluice/clients", Clients, CIDR, "/etc/sluice/clients", ""},
		{"cidr:/etc/postfix/clients", Clients, CIDR, "/etc/postfix/clients", ""},
		{"lmdb:/etc/postfix/senders", Senders, 0, "", `unknown table type "lmdb:"`},
		{"hash:/etc/postfix/clients", Clients, 0, "", "a client table is cidr:, regexp: or pcre:"},
		{"cidr:/etc/postfix/senders", Senders, 0, "", "a cidr: table matches client addresses"},
		{"regexp:", HELONames, 0, "", "names no file"},
	} {
		f, p, err := ParseSpec(tc.spec, tc.kind)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %v, want %q", tc.spec, err, tc.err)
			}
			continue
		}
		if err != nil || f != tc.format || p != tc.path {
			t.Errorf("%s: %v %q %v; want %v %q", tc.spec, f, p, err, tc.format, tc.path)
		}
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "senders")
	os.WriteFile(path, []byte(senders), 0o644)
	tab, err := Load(path, Senders)
	if err != nil {
		t.Fatal(err)
	}
	if tab.Len() != 9 || tab.Path() != path || len(tab.Entries()) != 9 {
		t.Errorf("len %d path %s", tab.Len(), tab.Path())
	}
	if _, err := Load(path+".missing", Senders); err == nil || !strings.Contains(err.Error(), path+".missing") {
		t.Errorf("missing file: %v", err)
	}
	os.WriteFile(path, []byte("ok.example OK\nbad.example NOPE\n"), 0o644)
	if _, err := Load(path, Senders); err == nil || !strings.HasPrefix(err.Error(), path+":2:") {
		t.Errorf("bad file: %v, want it to start with %s:2:", err, path)
	}
	os.WriteFile(path, []byte("/a/ OK\n/(/ REJECT\n"), 0o644)
	if _, err := Load("regexp:"+path, HELONames); err == nil || !strings.HasPrefix(err.Error(), path+":2:") {
		t.Errorf("bad regexp: %v, want it to start with %s:2:", err, path)
	}
}

// A cidr table's runs of plain entries are looked up through an index;
// whatever the table — overlapping networks of every length, '!', if
// blocks — the answer is the first match a line-by-line reading gives.
func TestCIDRIndexMatchesLinear(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	addr := func() netip.Addr {
		if rng.IntN(4) == 0 {
			return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(rng.IntN(4)), byte(rng.IntN(256))})
		}
		return netip.AddrFrom4([4]byte{10, byte(rng.IntN(4)), byte(rng.IntN(256)), byte(rng.IntN(256))})
	}
	for round := range 200 {
		var text strings.Builder
		open := 0
		for range 20 + rng.IntN(200) {
			a := addr()
			bits := 8 + rng.IntN(a.BitLen()-7)
			p, _ := a.Prefix(bits)
			switch k := rng.IntN(40); {
			case k == 0 && open < 3:
				fmt.Fprintf(&text, "if %s\n", p)
				open++
			case k == 1 && open > 0:
				text.WriteString("endif\n")
				open--
			case k == 2:
				fmt.Fprintf(&text, "!%s TAG x\n", p)
			default:
				fmt.Fprintf(&text, "%s %s\n", p, []string{"REJECT x", "TEMPFAIL x", "TAG x", "OK", "DUNNO"}[rng.IntN(5)])
			}
		}
		for ; open > 0; open-- {
			text.WriteString("endif\n")
		}
		indexed := parse(t, text.String(), Clients, CIDR)
		linear := parse(t, text.String(), Clients, CIDR)
		for i := range linear.rules {
			linear.rules[i].run = nil
		}
		for range 200 {
			ip := addr()
			got, want := indexed.match("", ip), linear.match("", ip)
			if got != nil && want != nil && got.Line != want.Line || (got == nil) != (want == nil) {
				t.Fatalf("round %d, %s: indexed %+v, line by line %+v\n%s", round, ip, got, want, text.String())
			}
		}
	}
}
