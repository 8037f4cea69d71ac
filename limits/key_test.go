package limits

import (
	"net/netip"
	"strings"
	"testing"
	"unicode/utf8"

	"sluice/policy"
)

// keyOf builds the key of rule r for f, failing t when the rule does not
// compile.
func keyOf(t *testing.T, r Rule, f policy.Facts) (string, bool) {
	t.Helper()
	c, err := compileRule(&r, nil, nil)
	if err != nil {
		t.Fatalf("rule %+v: %v", r, err)
	}
	k, ok := c.keyer.appendKey(nil, &f)
	return string(k), ok
}

func rcptRule(per any) Rule {
	return Rule{Name: "r", Count: "recipients", Per: per, Rate: "10/1m"}
}

func TestKeys(t *testing.T) {
	v4 := netip.MustParseAddr("192.0.2.77")
	v6 := netip.MustParseAddr("2001:db8:1:2:3:4:5:6")
	tests := []struct {
		name string
		rule Rule
		f    policy.Facts
		want string // "" with ok false: the rule does not apply
	}{
		{"ipv4 default /32", rcptRule("client_ip"), policy.Facts{ClientIP: v4}, "client_ip:192.0.2.77"},
		{"ipv4 /24", withRule(rcptRule("client_ip"), func(r *Rule) { r.IPv4Prefix = 24 }), policy.Facts{ClientIP: v4}, "client_ip:192.0.2.0/24"},
		{"ipv6 default /64", rcptRule("client_ip"), policy.Facts{ClientIP: v6}, "client_ip:2001:db8:1:2::/64"},
		{"ipv6 /48", withRule(rcptRule("client_ip"), func(r *Rule) { r.IPv6Prefix = 48 }), policy.Facts{ClientIP: v6}, "client_ip:2001:db8:1::/48"},
		{"ipv6 /128", withRule(rcptRule("client_ip"), func(r *Rule) { r.IPv6Prefix = 128 }), policy.Facts{ClientIP: v6}, "client_ip:2001:db8:1:2:3:4:5:6"},
		{"ipv6 zone dropped", withRule(rcptRule("client_ip"), func(r *Rule) { r.IPv6Prefix = 128 }), policy.Facts{ClientIP: netip.MustParseAddr("fe80::1%eth0")}, "client_ip:fe80::1"},
		{"ipv4-mapped counts as ipv4", rcptRule("client_ip"), policy.Facts{ClientIP: netip.MustParseAddr("::ffff:192.0.2.77")}, "client_ip:192.0.2.77"},
		{"ipv4-mapped with the v4 prefix", withRule(rcptRule("client_ip"), func(r *Rule) { r.IPv4Prefix = 16 }), policy.Facts{ClientIP: netip.MustParseAddr("::ffff:192.0.2.77")}, "client_ip:192.0.0.0/16"},
		{"no client ip", rcptRule("client_ip"), policy.Facts{}, ""},

		{"sender lower-cased whole", rcptRule("sender"), policy.Facts{Sender: "Alice@Example.ORG"}, "sender:alice@example.org"},
		{"sender brackets and trailing dot", rcptRule("sender"), policy.Facts{Sender: "<alice@example.org.>"}, "sender:alice@example.org"},
		{"sender extension kept", rcptRule("sender"), policy.Facts{Sender: "alice+news@example.org"}, "sender:alice+news@example.org"},
		{"sender extension stripped", withRule(rcptRule("sender"), func(r *Rule) { r.StripExtension = true }), policy.Facts{Sender: "Alice+News+x@Example.org"}, "sender:alice@example.org"},
		{"leading + is not an extension", withRule(rcptRule("sender"), func(r *Rule) { r.StripExtension = true }), policy.Facts{Sender: "+tag@example.org"}, "sender:+tag@example.org"},
		{"quoted local part left whole", withRule(rcptRule("sender"), func(r *Rule) { r.StripExtension = true }), policy.Facts{Sender: `"a+b"@example.org`}, `sender:"a+b"@example.org`},
		{"quoted local part with space and comma escaped", rcptRule("sender"), policy.Facts{Sender: `"John Doe, Jr"@Example.org`}, `sender:"john%20doe%2C%20jr"@example.org`},
		{"UTF-8 lower-cased, IDN domain as DNS knows it", rcptRule("sender"), policy.Facts{Sender: "ÜBER@BÜCHER.DE"}, "sender:über@xn--bcher-kva.de"},
		{"invalid UTF-8 escaped, not replaced", rcptRule("sender"), policy.Facts{Sender: "a\xffb@example.org"}, "sender:a%FFb@example.org"},
		{"CR LF escaped", rcptRule("sender"), policy.Facts{Sender: "a\r\nb@example.org"}, "sender:a%0D%0Ab@example.org"},
		{"percent escaped", rcptRule("sender"), policy.Facts{Sender: "100%@example.org"}, "sender:100%25@example.org"},
		{"null sender skipped by default", rcptRule("sender"), policy.Facts{Sender: ""}, ""},
		{"null sender <> skipped", rcptRule("sender"), policy.Facts{Sender: "<>"}, ""},
		{"null sender counted", withRule(rcptRule("sender"), func(r *Rule) { r.NullSender = "count" }), policy.Facts{Sender: ""}, "sender:<>"},
		{"null sender domain counted", withRule(rcptRule("sender_domain"), func(r *Rule) { r.NullSender = "count" }), policy.Facts{Sender: "<>"}, "sender_domain:<>"},
		{"null sender explicitly skipped", withRule(rcptRule("sender"), func(r *Rule) { r.NullSender = "skip" }), policy.Facts{Sender: ""}, ""},

		{"sender_domain", rcptRule("sender_domain"), policy.Facts{Sender: "bob@Mail.Example.ORG."}, "sender_domain:mail.example.org"},
		{"sender_domain of an address without one", rcptRule("sender_domain"), policy.Facts{Sender: "postmaster"}, ""},
		{"sender_domain of a quoted local part with @", rcptRule("sender_domain"), policy.Facts{Sender: `"a@b"@example.org`}, "sender_domain:example.org"},

		{"sasl_user", rcptRule("sasl_user"), policy.Facts{SASLUser: "Bob@Example.test"}, "sasl_user:bob@example.test"},
		{"not authenticated", rcptRule("sasl_user"), policy.Facts{}, ""},
		{"helo trailing dot", rcptRule("helo"), policy.Facts{Helo: "Mail.Example.NET."}, "helo:mail.example.net"},
		{"no helo", rcptRule("helo"), policy.Facts{}, ""},
		{"rcpt", rcptRule("rcpt"), policy.Facts{Rcpt: "<Carol+x@Example.net>"}, "rcpt:carol+x@example.net"},
		{"rcpt stripped", withRule(rcptRule("rcpt"), func(r *Rule) { r.StripExtension = true }), policy.Facts{Rcpt: "carol+x@example.net"}, "rcpt:carol@example.net"},
		{"rcpt_domain", rcptRule("rcpt_domain"), policy.Facts{Rcpt: "carol@GMail.com"}, "rcpt_domain:gmail.com"},
		{"listener", rcptRule("listener"), policy.Facts{Listener: "submission"}, "listener:submission"},
		{"no listener", rcptRule("listener"), policy.Facts{}, ""},

		{"composite", rcptRule([]any{"sasl_user", "rcpt_domain"}), policy.Facts{SASLUser: "bob", Rcpt: "x@Gmail.com"}, "sasl_user:bob,rcpt_domain:gmail.com"},
		{"composite in the order given", rcptRule([]any{"rcpt_domain", "client_ip"}), policy.Facts{ClientIP: v4, Rcpt: "x@gmail.com"}, "rcpt_domain:gmail.com,client_ip:192.0.2.77"},
		{"composite cannot be forged with a comma", rcptRule([]any{"sasl_user", "rcpt_domain"}), policy.Facts{SASLUser: "bob,rcpt_domain:gmail.com", Rcpt: "x@a"}, "sasl_user:bob%2Crcpt_domain:gmail.com,rcpt_domain:a"},
		{"composite with one part missing", rcptRule([]any{"sasl_user", "rcpt_domain"}), policy.Facts{Rcpt: "x@gmail.com"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := keyOf(t, tt.rule, tt.f)
			if !ok {
				got = ""
			}
			if got != tt.want || ok != (tt.want != "") {
				t.Errorf("key = %q (applies %v), want %q", got, ok, tt.want)
			}
		})
	}
}

func withRule(r Rule, f func(*Rule)) Rule {
	f(&r)
	return r
}

// Case and extension variants of one mailbox must share one counter.
func TestKeyVariantsShareCounter(t *testing.T) {
	r := withRule(rcptRule("sender"), func(r *Rule) { r.StripExtension = true })
	want, _ := keyOf(t, r, policy.Facts{Sender: "alice@example.org"})
	for _, a := range []string{"Alice@example.org", "ALICE@EXAMPLE.ORG", "alice+1@example.org", "Alice+Promo@Example.Org.", "<alice@example.org>"} {
		if got, _ := keyOf(t, r, policy.Facts{Sender: a}); got != want {
			t.Errorf("%q: key %q, want %q", a, got, want)
		}
	}
	// Other mailboxes do not.
	for _, a := range []string{"alice2@example.org", "alice@example.net", "bob+alice@example.org"} {
		if got, _ := keyOf(t, r, policy.Facts{Sender: a}); got == want {
			t.Errorf("%q shares alice's key %q", a, got)
		}
	}
}

// The two spellings of an internationalised domain share one counter.
func TestIDNDomainsShareCounter(t *testing.T) {
	for _, per := range []string{"sender_domain", "rcpt_domain", "helo"} {
		r := rcptRule(per)
		a, _ := keyOf(t, r, policy.Facts{Sender: "a@bücher.de", Rcpt: "b@bücher.de", Helo: "bücher.de"})
		b, _ := keyOf(t, r, policy.Facts{Sender: "a@XN--BCHER-KVA.de", Rcpt: "b@xn--bcher-kva.de", Helo: "xn--bcher-kva.de."})
		if a != b || !strings.Contains(a, "xn--bcher-kva.de") {
			t.Errorf("per %s: keys %q and %q, want one ASCII key", per, a, b)
		}
	}
}

func TestKeyBounded(t *testing.T) {
	r := rcptRule([]any{"sender", "helo"})
	long1 := strings.Repeat("a", 5000) + "@example.org"
	long2 := strings.Repeat("a", 4999) + "b@example.org"
	k1, _ := keyOf(t, r, policy.Facts{Sender: long1, Helo: strings.Repeat("é", 3000)})
	k2, _ := keyOf(t, r, policy.Facts{Sender: long2, Helo: strings.Repeat("é", 3000)})
	k1again, _ := keyOf(t, r, policy.Facts{Sender: long1, Helo: strings.Repeat("é", 3000)})
	if max := 2 * (maxValueLen + len("sender_domain:,")); len(k1) > max {
		t.Errorf("key of %d bytes, want at most %d", len(k1), max)
	}
	if k1 == k2 {
		t.Errorf("two long senders that differ near the end share key %q", k1)
	}
	if k1 != k1again {
		t.Errorf("same input, different keys")
	}
	if !utf8.ValidString(k1) {
		t.Errorf("a cut in a UTF-8 value left invalid UTF-8: %q", k1)
	}
	// A value of exactly the bound is kept whole.
	exact := strings.Repeat("b", maxValueLen-len("@x")) + "@x"
	if k, _ := keyOf(t, rcptRule("sender"), policy.Facts{Sender: exact}); k != "sender:"+exact {
		t.Errorf("a value of %d bytes was changed: %q", maxValueLen, k)
	}
	// An escaped value is cut at an escape boundary.
	k, _ := keyOf(t, rcptRule("sender"), policy.Facts{Sender: strings.Repeat(",", 200)})
	v := strings.TrimPrefix(k, "sender:")
	cut, _, _ := strings.Cut(v, "%~")
	if len(cut)%3 != 0 || len(v) > maxValueLen {
		t.Errorf("escaped value cut badly: %q", v)
	}
}

func TestNormalizeAddress(t *testing.T) {
	tests := []struct {
		in    string
		strip bool
		want  string
	}{
		{"Alice@Example.ORG", false, "alice@example.org"},
		{"<alice+x@example.org.>", true, "alice@example.org"},
		{"<<a>>", false, "a"},
		{"a@b>.", false, "a@b"},
		{"a.+b@x", true, "a.@x"},
		{"a+b", true, "a+b"}, // no domain: no extension to strip
		{`"a+b"@x`, true, `"a+b"@x`},
		{"İSTANBUL@x", false, "istanbul@x"},
		// An internationalised domain counts as DNS knows it.
		{"Jürgen@Bücher.DE", false, "jürgen@xn--bcher-kva.de"},
		{"jürgen@xn--bcher-kva.de", false, "jürgen@xn--bcher-kva.de"},
	}
	for _, tt := range tests {
		if got := normalizeAddress(tt.in, tt.strip); got != tt.want {
			t.Errorf("normalizeAddress(%q, %v) = %q, want %q", tt.in, tt.strip, got, tt.want)
		}
		if again := normalizeAddress(normalizeAddress(tt.in, tt.strip), tt.strip); again != tt.want {
			t.Errorf("normalizeAddress twice of %q = %q, want %q", tt.in, again, tt.want)
		}
	}
}

func TestKeyAllocatesNothing(t *testing.T) {
	c, err := compileRule(&Rule{Name: "r", Count: "recipients", Per: []any{"client_ip", "sender", "sasl_user", "rcpt_domain", "helo", "listener"}, Rate: "1/1s", StripExtension: true}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := policy.Facts{
		ClientIP: netip.MustParseAddr("2001:db8::1"), Sender: "Ünïcode+Tag@Example.ORG", SASLUser: "Bob",
		Rcpt: "x@Gmail.com", Helo: "MX.example.", Listener: "smtpd",
	}
	buf := make([]byte, 0, 512)
	allocs := testing.AllocsPerRun(100, func() {
		buf, _ = c.keyer.appendKey(buf[:0], &f)
	})
	if allocs != 0 {
		t.Errorf("appendKey allocates %v times", allocs)
	}
}

// The eight-bytes-at-a-time path of appendNorm gives what the byte-by-byte
// one gives: every byte value at every place of a word.
func TestAppendNormFastPath(t *testing.T) {
	base := []byte("abcdefghABCDEFGH.-+@xyz0129XYZ~!_")
	for b := range 256 {
		for p := range 16 {
			in := append([]byte(nil), base...)
			in[p] = byte(b)
			fast := appendNorm([]byte("k:"), string(in), true)
			slow := appendNormSlow([]byte("k:"), string(in), true)
			if string(fast) != string(slow) {
				t.Fatalf("byte %#x at %d: %q, want %q", b, p, fast, slow)
			}
		}
	}
}
