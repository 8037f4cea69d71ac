package resolver

import (
	"fmt"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// FuzzInterpret feeds arbitrary DNS messages, as a server could send them,
// to what reads an answer. It must not panic, and what it keeps must be
// bounded by what arrived: at most twice the message's bytes and a few KB
// (MX and PTR names, which compression can make longer than their bytes
// on the wire, are kept 11 and 10 at most).
func FuzzInterpret(f *testing.F) {
	seed := func(qtype uint16, rrs ...string) {
		m := new(dns.Msg)
		m.SetQuestion("a.test.", qtype)
		m.Response = true
		for _, s := range rrs {
			m.Answer = append(m.Answer, dns.Copy(mustRR(s)))
		}
		m.Compress = true
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed(dns.TypeA, "a.test. 60 IN A 192.0.2.1", "a.test. 60 IN A 192.0.2.2")
	seed(dns.TypeAAAA, "a.test. 60 IN CNAME b.test.", "b.test. 60 IN AAAA 2001:db8::1")
	seed(dns.TypeTXT, `a.test. 60 IN TXT "v=spf1 " "a -all"`, `a.test. 60 IN TXT "back\\slash \"q\" \255"`)
	seed(dns.TypePTR, "a.test. 60 IN PTR n1.test.", "a.test. 60 IN PTR n2.test.")
	var mx []string
	for i := range 20 {
		mx = append(mx, fmt.Sprintf("a.test. 60 IN MX %d mx%d.a.test.", i, i))
	}
	seed(dns.TypeMX, mx...)
	f.Fuzz(func(t *testing.T, raw []byte) {
		m := new(dns.Msg)
		if m.Unpack(raw) != nil {
			return
		}
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeTXT, dns.TypeMX, dns.TypePTR} {
			a, _, _, err := interpret(m, "a.test.", qt, time.Hour)
			if err != nil {
				continue
			}
			if c := a.cost("a.test."); c > 2*len(raw)+8<<10 {
				t.Fatalf("a %d-byte message kept as %d bytes for %s", len(raw), c, dns.TypeToString[qt])
			}
			if len(a.strs) > max(maxMX, maxPTR) && (qt == dns.TypeMX || qt == dns.TypePTR) {
				t.Fatalf("%d names kept for %s", len(a.strs), dns.TypeToString[qt])
			}
		}
	})
}

func mustRR(s string) dns.RR {
	rr, err := dns.NewRR(s)
	if err != nil {
		panic(err)
	}
	return rr
}
