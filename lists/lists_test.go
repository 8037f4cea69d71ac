package lists

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func mustParse(t *testing.T, entries ...string) *List {
	t.Helper()
	l, err := Parse("test", entries, nil)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestNetworks(t *testing.T) {
	l := mustParse(t, "192.0.2.0/24", "198.51.100.7", "2001:db8::/32", "::1", "::ffff:203.0.113.0/120", "fe80::1%eth0", "10.0.0.0/8", "10.1.0.0/16")
	for _, tc := range []struct {
		ip   string
		want bool
	}{
		{"192.0.2.0", true}, {"192.0.2.255", true}, {"192.0.3.0", false}, {"192.0.1.255", false},
		{"198.51.100.7", true}, {"198.51.100.8", false},
		{"2001:db8::1", true}, {"2001:db8:ffff::1", true}, {"2001:db9::1", false},
		{"::1", true}, {"::2", false},
		{"203.0.113.9", true},      // a mapped network matches the IPv4 client
		{"::ffff:192.0.2.9", true}, // a mapped client matches an IPv4 network
		{"fe80::1", true},          // zones are dropped
		{"fe80::1%eth1", true},     //
		{"10.200.1.1", true},       // merged ranges
		{"0.0.0.0", false},
		{"255.255.255.255", false},
	} {
		if got := l.ContainsIP(netip.MustParseAddr(tc.ip)); got != tc.want {
			t.Errorf("ContainsIP(%s) = %v, want %v", tc.ip, got, tc.want)
		}
	}
	if l.ContainsIP(netip.Addr{}) {
		t.Error("a client without an address matched")
	}
	if !l.HasNetworks() || mustParse(t, "example.com").HasNetworks() {
		t.Error("HasNetworks")
	}
	var nilList *List
	if nilList.ContainsIP(netip.MustParseAddr("192.0.2.1")) || nilList.MatchDomain("x.org") || nilList.MatchAddress("a@x.org") {
		t.Error("a nil list matched")
	}
	// A whole family.
	all := mustParse(t, "0.0.0.0/0")
	if !all.ContainsIP(netip.MustParseAddr("203.0.113.1")) || all.ContainsIP(netip.MustParseAddr("2001:db8::1")) {
		t.Error("0.0.0.0/0 must hold every IPv4 address and no IPv6 one")
	}
}

func TestDomains(t *testing.T) {
	l := mustParse(t, "Example.COM", ".example.net", "trailing.org.", "b\u00fccher.de")
	for _, tc := range []struct {
		d    string
		want bool
	}{
		{"example.com", true}, {"EXAMPLE.com.", true}, {"mx.example.com", false}, // exact only
		{"example.net", false}, {"mx.example.net", true}, {"a.b.example.net", true}, // .suffix: subdomains only
		{"badexample.net", false},
		{"trailing.org", true},
		{"b\u00fccher.de", true},
		{"", false},
	} {
		if got := l.MatchDomain(tc.d); got != tc.want {
			t.Errorf("MatchDomain(%q) = %v, want %v", tc.d, got, tc.want)
		}
	}
}

func TestAddresses(t *testing.T) {
	l := mustParse(t, "Alice@Example.org", "example.com", ".example.net", `/^bounce-[0-9]+@/`)
	for _, tc := range []struct {
		a    string
		want bool
	}{
		{"alice@example.org", true}, {"ALICE@EXAMPLE.ORG", true}, {"bob@example.org", false},
		{"anyone@example.com", true}, // a domain entry covers its addresses
		{"x@mx.example.net", true},   // and a .suffix its subdomains'
		{"x@example.net", false},     //
		{"bounce-42@lists.example", true},
		{"Bounce-42@lists.example", true}, // regexps ignore case, as in Postfix's regexp tables
		{"bounce-x@lists.example", false},
		{"", false},
	} {
		if got := l.MatchAddress(tc.a); got != tc.want {
			t.Errorf("MatchAddress(%q) = %v, want %v", tc.a, got, tc.want)
		}
	}
}

func TestRegexps(t *testing.T) {
	l := mustParse(t, `/^mx[0-9]+\.example\.org$/`, `/^192\.0\.2\./`)
	if !l.MatchDomain("MX12.example.org") || l.MatchDomain("mx.example.org") {
		t.Error("regexp against a domain")
	}
	if !l.ContainsIP(netip.MustParseAddr("192.0.2.77")) || l.ContainsIP(netip.MustParseAddr("192.0.20.1")) {
		t.Error("regexp against an address's text")
	}
}

func TestHosts(t *testing.T) {
	l := mustParse(t, ".dynamic.example", "mail.example.org")
	for _, tc := range []struct {
		h    string
		want bool
	}{
		{"host-1.dynamic.example", true}, {"mail.example.org", true},
		{"unknown", false}, {"[192.0.2.7]", false}, {"", false},
	} {
		if got := l.MatchHost(tc.h); got != tc.want {
			t.Errorf("MatchHost(%q) = %v, want %v", tc.h, got, tc.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ entry, want string }{
		{"192.0.2.0/33", "bad network"},
		{"192.0.2.7/24", "did you mean 192.0.2.0/24"},
		{"192.0.2.300", "not a valid IP address"},
		{"10.0.0", "not a valid IP address"},
		{"2001:db8::/129", "bad network"},
		{"fe80::/10%eth0", "bad network"},
		{"/unclosed", "between slashes"},
		{"//", "between slashes"},
		{"/a(/", "bad regexp"},
		{"exa mple.com", "neither"},
		{"example..com", "empty label"},
		{".", "empty"},
		{"@example.com", "bad address"},
		{"a@b@example.com", "bad address"},
		{"a@", "empty domain"},
		{"a@bad domain", "bad address"},
		{"a@bad$domain.org", "neither"},
		{"[192.0.2.1]", "neither"},
		{"ex$ample.com", "neither"},
		{"", "empty entry"},
		{strings.Repeat("a", 250) + ".com", "longer than 253"},
	} {
		_, err := Parse("test", []string{tc.entry}, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want an error saying %q", tc.entry, err, tc.want)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "entry 1: ") {
			t.Errorf("Parse(%q): %v does not name the entry", tc.entry, err)
		}
	}
}

func TestReadFile(t *testing.T) {
	text := `# Japanese networks
192.0.2.0/24        # office
198.51.100.7

.example.jp
alice@example.org   # one address
/^mx[0-9]+\.example\.com$/   # a regexp, then a comment
/a#b/
/x/y/
	 2001:db8::/32	
`
	l, err := Read("jp", "jp.cidr", strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name string
		ok   bool
	}{
		{"network", l.ContainsIP(netip.MustParseAddr("192.0.2.9"))},
		{"address", l.ContainsIP(netip.MustParseAddr("198.51.100.7"))},
		{"v6 with blanks around", l.ContainsIP(netip.MustParseAddr("2001:db8::5"))},
		{"suffix", l.MatchDomain("www.example.jp")},
		{"mail address", l.MatchAddress("alice@example.org")},
		{"regexp before a comment", l.MatchDomain("mx1.example.com")},
		{"regexp holding #", l.MatchDomain("a#b")},
		{"regexp holding /", l.MatchDomain("x/y")},
		{"comment is no entry", !l.MatchDomain("office")},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("%s: no match", c.name)
		}
	}
}

func TestReadFileErrorsNameTheLine(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"192.0.2.0/24\n\n# c\n192.0.2.0/33\n", "jp.cidr:4: bad network"},
		{"192.0.2.0/24 OK\n", "jp.cidr:1: one entry a line"},
		{"ok.example\n/never closed\n", "jp.cidr:2: regexp"},
		{"a\n" + strings.Repeat("x", maxLine+10) + "\n", "jp.cidr:2: line longer than"},
	} {
		_, err := Read("jp", "jp.cidr", strings.NewReader(tc.text))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Read(%.40q) = %v, want %q", tc.text, err, tc.want)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "jp.cidr")
	if err := os.WriteFile(path, []byte("192.0.2.0/24\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := Load("jp", path)
	if err != nil || !l.ContainsIP(netip.MustParseAddr("192.0.2.1")) {
		t.Fatalf("Load: %v", err)
	}
	missing := filepath.Join(dir, "missing.cidr")
	_, err = Load("jp", missing)
	if err == nil || !strings.Contains(err.Error(), missing) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file: %v; want an error naming %s", err, missing)
	}
}

// FuzzRead: a list file never panics the parser, and what it accepts it
// can match against without panicking either.
func FuzzRead(f *testing.F) {
	for _, s := range []string{
		"192.0.2.0/24\n198.51.100.7 # x\n",
		".example.jp\nalice@example.org\n",
		"/^mx[0-9]+\\./ # c\n/a#b/\n",
		"2001:db8::/32\n::ffff:192.0.2.0/120\nfe80::1%eth0\n",
		"# only a comment\n\n",
		"192.0.2.300\n",
		"/(/\n",
	} {
		f.Add(s)
	}
	probes := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("::ffff:10.0.0.1")}
	f.Fuzz(func(t *testing.T, text string) {
		l, err := Read("fuzz", "fuzz.list", strings.NewReader(text))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.list:") && !strings.HasPrefix(err.Error(), "read fuzz.list") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		for _, ip := range probes {
			l.ContainsIP(ip)
		}
		for _, s := range []string{"example.org", "a@example.org", text} {
			l.MatchDomain(s)
			l.MatchAddress(s)
			l.MatchHost(s)
		}
		// The ranges stay sorted and disjoint, or lookups would lie.
		for i := 1; i < len(l.ranges); i++ {
			a, b := l.ranges[i-1], l.ranges[i]
			if b.lo.BitLen() == a.hi.BitLen() && !a.hi.Less(b.lo) {
				t.Fatalf("ranges overlap: %v %v", a, b)
			}
		}
	})
}

func TestUnion(t *testing.T) {
	a, err := Parse("a", []string{"192.0.2.0/25", "example.org", "/^mx[0-9]+\\.example\\.net$/"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Parse("b", []string{"192.0.2.128/25", ".example.com", "bob@example.net"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	u := Union("u", a, nil, b)
	for _, ip := range []string{"192.0.2.1", "192.0.2.200"} {
		if !u.ContainsIP(netip.MustParseAddr(ip)) {
			t.Errorf("union misses %s", ip)
		}
	}
	if u.ContainsIP(netip.MustParseAddr("192.0.3.1")) {
		t.Error("union holds 192.0.3.1")
	}
	for _, d := range []string{"example.org", "a.example.com", "mx7.example.net"} {
		if !u.MatchDomain(d) {
			t.Errorf("union misses domain %s", d)
		}
	}
	if !u.MatchAddress("Bob@example.net") || u.MatchAddress("carol@example.net") {
		t.Error("union addresses wrong")
	}
	// The parts are unchanged.
	if a.ContainsIP(netip.MustParseAddr("192.0.2.200")) || b.MatchDomain("example.org") {
		t.Error("Union changed its arguments")
	}
}
