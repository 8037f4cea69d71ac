package dnstest

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func ask(t *testing.T, s *Server, network, name string, qtype uint16) (*dns.Msg, error) {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 300 * time.Millisecond}
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	m, _, err := c.Exchange(q, s.Addr())
	return m, err
}

func mustAsk(t *testing.T, s *Server, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m, err := ask(t, s, "udp", name, qtype)
	if err != nil {
		t.Fatalf("%s %s: %v", name, dns.TypeToString[qtype], err)
	}
	return m
}

func txts(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		if t, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(t.Txt, "|"))
		}
	}
	return out
}

func TestSuiteZone(t *testing.T) {
	z, err := ParseSuiteZone([]byte(`
zonedata:
  copied.example:
    - SPF: v=spf1 -all
  both.example:
    - SPF: v=spf1 +all
    - TXT: v=spf1 -all
  spfonly.example:
    - SPF: v=spf1 -all
    - TXT: NONE
  split.example:
    - SPF: ['v=spf1', ' mx']
  txtfirst.example:
    - TXT: v=spf1 -all
    - TIMEOUT
  alltimeout.example:
    - TIMEOUT
  mx.example:
    - MX: [10, mail.mx.example]
    - A: 192.0.2.1
    - AAAA: 2001:db8::1
  4.3.2.1.in-addr.arpa:
    - PTR: mail.mx.example
  alias.example:
    - CNAME: mx.example.
  odd.example:
    - TXT: "back\\slash and \x80"
`))
	if err != nil {
		t.Fatal(err)
	}
	s := Start(t, z)

	for _, tc := range []struct {
		name string
		want []string
	}{
		{"copied.example", []string{"v=spf1 -all"}},
		{"both.example", []string{"v=spf1 -all"}},
		{"spfonly.example", nil},
		{"split.example", []string{"v=spf1| mx"}},
		{"txtfirst.example", []string{"v=spf1 -all"}},
		{"odd.example", []string{`back\\slash and \194\128`}},
	} {
		m := mustAsk(t, s, tc.name, dns.TypeTXT)
		if got := txts(m); strings.Join(got, ";") != strings.Join(tc.want, ";") || m.Rcode != dns.RcodeSuccess {
			t.Errorf("%s TXT = %q rcode %d, want %q", tc.name, got, m.Rcode, tc.want)
		}
	}
	if m := mustAsk(t, s, "spfonly.example", dns.TypeSPF); len(m.Answer) != 1 {
		t.Errorf("SPF type record not served: %v", m)
	}
	// TIMEOUT spares the types listed before it
	if _, err := ask(t, s, "udp", "txtfirst.example", dns.TypeA); !isTimeout(err) {
		t.Errorf("txtfirst A: %v, want a timeout", err)
	}
	for _, qt := range []uint16{dns.TypeTXT, dns.TypeA, dns.TypeMX} {
		if _, err := ask(t, s, "udp", "alltimeout.example", qt); !isTimeout(err) {
			t.Errorf("alltimeout %s: %v, want a timeout", dns.TypeToString[qt], err)
		}
	}
	if _, err := ask(t, s, "tcp", "alltimeout.example", dns.TypeTXT); !isTimeout(err) {
		t.Errorf("alltimeout over TCP: %v, want a timeout", err)
	}
	m := mustAsk(t, s, "MX.example", dns.TypeMX)
	if len(m.Answer) != 1 || m.Answer[0].(*dns.MX).Mx != "mail.mx.example." || m.Answer[0].Header().Name != "MX.example." {
		t.Errorf("MX: %v", m.Answer)
	}
	if m := mustAsk(t, s, "4.3.2.1.in-addr.arpa", dns.TypePTR); len(m.Answer) != 1 {
		t.Errorf("PTR: %v", m.Answer)
	}
	m = mustAsk(t, s, "alias.example", dns.TypeAAAA)
	if len(m.Answer) != 2 || m.Answer[0].Header().Rrtype != dns.TypeCNAME || m.Answer[1].(*dns.AAAA).AAAA.String() != "2001:db8::1" {
		t.Errorf("CNAME chase: %v", m.Answer)
	}
	if m := mustAsk(t, s, "missing.example", dns.TypeA); m.Rcode != dns.RcodeNameError || len(m.Ns) != 1 {
		t.Errorf("missing name: rcode %d, authority %v; want NXDOMAIN with an SOA", m.Rcode, m.Ns)
	}
	if m := mustAsk(t, s, "example", dns.TypeA); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 {
		t.Errorf("empty non-terminal: rcode %d, want NODATA", m.Rcode)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestSuiteZoneErrors(t *testing.T) {
	for _, text := range []string{
		"a.example:\n  - A: 300.1.1.1\n",
		"a.example:\n  - A: 2001:db8::1\n",
		"a.example:\n  - WKS: x\n",
		"a.example:\n  - MX: [10]\n",
		"a.example:\n  - SLOW\n",
		"a.example:\n  - {A: 192.0.2.1, AAAA: '::1'}\n",
	} {
		if _, err := ParseSuiteZone([]byte(text)); err == nil || !strings.Contains(err.Error(), "a.example") {
			t.Errorf("%q: %v, want an error naming a.example", text, err)
		}
	}
}

func TestFaultsAndGoValues(t *testing.T) {
	z := NewZone().MustAddText(`a.example. 60 IN A 192.0.2.1`, `a.example. 60 IN TXT "hello"`)
	z.Fault("a.example", AnyType, ServFail).Fault("a.example", dns.TypeTXT, NoFault)
	s := Start(t, z)
	if m := mustAsk(t, s, "a.example", dns.TypeA); m.Rcode != dns.RcodeServerFailure {
		t.Errorf("A: rcode %d, want SERVFAIL", m.Rcode)
	}
	if m := mustAsk(t, s, "a.example", dns.TypeTXT); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Answer[0].Header().Ttl != 60 {
		t.Errorf("TXT exempt from the fault: %v", m)
	}
	z.Fault("a.example", AnyType, Refused)
	if m := mustAsk(t, s, "a.example", dns.TypeA); m.Rcode != dns.RcodeRefused {
		t.Errorf("A: rcode %d, want REFUSED", m.Rcode)
	}
	if s.Count("A.EXAMPLE", dns.TypeA) != 2 || s.Count("a.example", dns.TypeTXT) != 1 || s.Queries() != 3 {
		t.Errorf("counts: A %d TXT %d all %d", s.Count("a.example", dns.TypeA), s.Count("a.example", dns.TypeTXT), s.Queries())
	}
	s.SetZone(NewZone().MustAddText(`b.example. 60 IN A 192.0.2.2`))
	if m := mustAsk(t, s, "a.example", dns.TypeA); m.Rcode != dns.RcodeNameError {
		t.Errorf("after SetZone: rcode %d", m.Rcode)
	}
	if err := z.AddText("not a record"); err == nil {
		t.Error("AddText accepted garbage")
	}
}

func TestTruncation(t *testing.T) {
	long := strings.Repeat("x", 700) // split into 255-byte strings
	z := NewZone().Add(&dns.TXT{Hdr: dns.RR_Header{Name: "big.example.", Rrtype: dns.TypeTXT, Ttl: 60}, Txt: []string{long}})
	s := Start(t, z)
	m := mustAsk(t, s, "big.example", dns.TypeTXT)
	if !m.Truncated {
		t.Fatalf("a 700-byte answer over UDP without EDNS was not truncated")
	}
	m, err := ask(t, s, "tcp", "big.example", dns.TypeTXT)
	if err != nil || len(m.Answer) != 1 {
		t.Fatalf("TCP: %v %v", m, err)
	}
	got := m.Answer[0].(*dns.TXT).Txt
	if len(got) != 3 || strings.Join(got, "") != long {
		t.Errorf("strings %d, joined %d bytes", len(got), len(strings.Join(got, "")))
	}
}

// A wildcard answers for every name below it that does not exist, under
// the asked name; a name that exists, or lies below one that exists, is
// not covered.
func TestWildcard(t *testing.T) {
	z := NewZone().MustAddText(
		`*.w.example. 60 IN TXT "v=spf1 a -all"`,
		`*.w.example. 60 IN A 192.0.2.1`,
		`real.w.example. 60 IN A 192.0.2.2`,
		`x.real.w.example. 60 IN A 192.0.2.3`,
	)
	s := Start(t, z)
	m := mustAsk(t, s, "r17.w.example", dns.TypeTXT)
	if got := txts(m); len(got) != 1 || got[0] != "v=spf1 a -all" || m.Answer[0].Header().Name != "r17.w.example." {
		t.Errorf("wildcard TXT = %v", m.Answer)
	}
	if m := mustAsk(t, s, "a.b.w.example", dns.TypeA); len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "192.0.2.1" {
		t.Errorf("wildcard two labels down: %v", m.Answer)
	}
	if m := mustAsk(t, s, "real.w.example", dns.TypeA); len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "192.0.2.2" {
		t.Errorf("existing name: %v", m.Answer)
	}
	if m := mustAsk(t, s, "real.w.example", dns.TypeTXT); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 {
		t.Errorf("existing name without TXT: %v, want NODATA", m)
	}
	if m := mustAsk(t, s, "y.real.w.example", dns.TypeA); m.Rcode != dns.RcodeNameError {
		t.Errorf("below an existing name: rcode %d, want NXDOMAIN", m.Rcode)
	}
	if m := mustAsk(t, s, "other.example", dns.TypeA); m.Rcode != dns.RcodeNameError {
		t.Errorf("outside the wildcard: rcode %d, want NXDOMAIN", m.Rcode)
	}
}

// A name with 4,000 A records is what a hostile sender zone serves: cut
// to the EDNS size over UDP, and complete, compressed into one 64 KiB
// message, over TCP.
func TestThousandsOfAddresses(t *testing.T) {
	const n = 4000
	z := NewZone().AddAddrs("*.flood.example.", 300, Addrs("10.0.0.0", n)...)
	s := Start(t, z)
	c := &dns.Client{Net: "udp", Timeout: time.Second}
	q := new(dns.Msg)
	q.SetQuestion("r1.flood.example.", dns.TypeA)
	q.SetEdns0(1232, false)
	m, _, err := c.Exchange(q, s.Addr())
	if err != nil || !m.Truncated || len(m.Answer) >= n {
		t.Fatalf("UDP: %d records, truncated %v, %v; want a truncated answer", len(m.Answer), m.Truncated, err)
	}
	c.Net = "tcp"
	m, _, err = c.Exchange(q, s.Addr())
	if err != nil || m.Truncated || len(m.Answer) != n {
		t.Fatalf("TCP: %v, %v; want all %d records", m, err, n)
	}
	last := m.Answer[n-1].(*dns.A)
	if last.Hdr.Name != "r1.flood.example." || last.A.String() != "10.0.15.159" {
		t.Errorf("last record %v", last)
	}
}
