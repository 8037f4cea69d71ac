package auth

import "testing"

func TestCheckRecord(t *testing.T) {
	for _, rec := range []string{
		"v=spf1",
		"v=spf1 -all",
		"V=SPF1 IP4:192.0.2.1 -ALL",
		"v=spf1 include:_spf.google.com ~all",
		"v=spf1 include:spf.protection.outlook.com -all",
		"v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a mx ptr ?all",
		"v=spf1 a:mail.example.com/24//64 mx/24 a//64 mx:example.org -all",
		"v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} -all",
		"v=spf1 exists:%{i}.spf.%{d}. -all",
		"v=spf1 redirect=_spf.example.com",
		"v=spf1 -all exp=explain._spf.%{d}",
		"v=spf1 foo=bar moo.cow-far_out=man:dog/cat ip4:1.2.3.4 -all",
		"v=spf1  a   -all  ",
		"v=spf1 a:macro%%percent%_%_space%-url-space.example.com -all",
		"v=spf1 a:foo:bar/baz.example.com",
		"v=spf1 ip4:192.0.2.1/0 ip6:::1.1.1.1/0",
		"v=spf1 a:example.com. -all",
		"v=spf1 a:%{H}",
		"v=spf1 a:xn--e1afmkfd.xn--p1ai a:123-456.example.10-20",
	} {
		if err := checkRecord(rec); err != nil {
			t.Errorf("%q: %v", rec, err)
		}
	}
	for _, rec := range []string{
		"v=spf1 ip4:1.2.3.4 -all moo",
		"v=spf1 ip4:1.2.3.4 redirect:t2.example.com",
		"v=spf1 -all ip6",
		"v=spf1 ip4:1.2.3.4/032",
		"v=spf1 ip4:1.2.3.4/33",
		"v=spf1 ip6:2001:db8::/129",
		"v=spf1 ip4:2001:db8::1",
		"v=spf1 ip4:1.2.3.4/",
		"v=spf1 a/33",
		"v=spf1 a:foo-bar -all",
		"v=spf1 a:example.123 -all",
		"v=spf1 a:example.-com",
		"v=spf1 a: -all",
		"v=spf1 include -all",
		"v=spf1 all:foo",
		"v=spf1 ptr/24",
		"v=spf1 redirect= ?all",
		"v=spf1 redirect=a.example redirect=b.example",
		"v=spf1 -all exp=a.example exp=b.example",
		"v=spf1 -all exp=%{r}.example.com",
		"v=spf1 -all foo=%abc",
		"v=spf1 a:%{x}.example.com",
		"v=spf1 a:%{d0}.example.com",
		"v=spf1 a:%{d.example.com",
		"v=spf1 a:example.com%",
		"v=spf1 a:ctrl.example.com\rptr -all",
		"v=spf1 a:\u00efgarbage.example.net -all",
		"v=spf1 a:example.com\x00 -all",
		"v=spf1 +-all",
	} {
		if err := checkRecord(rec); err == nil {
			t.Errorf("%q passed", rec)
		}
	}
}
