package auth

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"sluice/policy"
)

const (
	none     = policy.ActionNone
	tag      = policy.ActionTag
	tempfail = policy.ActionTempfail
	reject   = policy.ActionReject
)

func TestRequireFQDNSender(t *testing.T) {
	c := checker(t, newFake(), func(c *Config) { c.Checks.RequireFQDNSender = &Check{} })
	for _, tc := range []struct {
		sender, value string
	}{
		{"alice@example.com", "pass"},
		{"alice@example.com.", "pass"},
		{"alice@[192.0.2.1]", "pass"},
		{"alice", "fail"},
		{"alice@localhost", "fail"},
		{"alice@localhost.", "fail"},
		{"alice@example..com", "fail"},
		{"", ""}, // the null sender has no domain to qualify
	} {
		s := session{ip: "192.0.2.1", helo: "mx.example.com", sender: tc.sender}
		vs, m := mail(c, s)
		action := none
		if tc.value == "fail" {
			action = reject
		}
		expect(t, m, vs, "require_fqdn_sender", tc.value, action)
		if tc.value == "fail" {
			v, _ := verdict(vs, "require_fqdn_sender")
			if got, want := reply(v, s), "550 5.1.7 <"+tc.sender+">: Sender address rejected: need fully-qualified address"; got != want {
				t.Errorf("reply %q, want %q", got, want)
			}
		}
	}
}

func TestSenderDomainExists(t *testing.T) {
	f := newFake()
	f.mx["mx.example"] = []*net.MX{{Host: "mail.mx.example.", Pref: 10}}
	f.mx["nullmx.example"] = []*net.MX{{Host: ".", Pref: 0}}
	f.addIP("aonly.example", "192.0.2.10")
	f.txt["txtonly.example"] = []string{"hello"}
	f.fail("MX", "servfail.example", errServFail)
	f.fail("MX", "timeout.example", errTimeout)
	f.txt["atimeout.example"] = nil
	f.fail("A+AAAA", "atimeout.example", errTimeout)
	c := checker(t, f, func(c *Config) { c.Checks.SenderDomainExists = &DNSCheck{} })
	for _, tc := range []struct {
		domain, value string
		action        policy.Action
		reply         string
	}{
		{"mx.example", "pass", none, ""},
		{"aonly.example", "pass", none, ""},
		{"nxdomain.example", "fail", reject, "550 5.1.8 <u@nxdomain.example>: Sender address rejected: Domain not found"},
		{"nullmx.example", "fail", reject, ""},
		{"txtonly.example", "fail", reject, ""},
		{"servfail.example", "temperror", tempfail, "451 4.1.8 <u@servfail.example>: Sender address rejected: cannot look up the domain now; try again later"},
		{"timeout.example", "temperror", tempfail, ""},
		{"atimeout.example", "temperror", tempfail, ""},
	} {
		s := session{ip: "192.0.2.1", helo: "h.example", sender: "u@" + tc.domain}
		vs, m := mail(c, s)
		r := expect(t, m, vs, "sender_domain_exists", tc.value, tc.action)
		if tc.reply != "" {
			v, _ := verdict(vs, "sender_domain_exists")
			if got := reply(v, s); got != tc.reply {
				t.Errorf("%s: reply %q, want %q", tc.domain, got, tc.reply)
			}
		}
		if tc.domain == "nullmx.example" && !strings.Contains(r.Detail, "null MX") {
			t.Errorf("null MX detail %q", r.Detail)
		}
	}
	// skipped without a domain to ask about
	for _, sender := range []string{"", "alice", "alice@[192.0.2.1]"} {
		vs, m := mail(c, session{ip: "192.0.2.1", helo: "h.example", sender: sender})
		expect(t, m, vs, "sender_domain_exists", "", none)
	}

	// in tag mode a temporary failure is only tagged too
	c = checker(t, f, func(c *Config) {
		c.Checks.SenderDomainExists = &DNSCheck{Check: Check{Action: policy.MustAction("tag")}}
	})
	vs, m := mail(c, session{ip: "192.0.2.1", helo: "h.example", sender: "u@servfail.example"})
	expect(t, m, vs, "sender_domain_exists", "temperror", tag)
}

func TestHeloChecks(t *testing.T) {
	old := hostname
	hostname = func() (string, error) { return "mx.ours.example", nil }
	defer func() { hostname = old }()
	c := checker(t, newFake(), func(c *Config) {
		c.Checks.RequireFQDNHelo = &Check{}
		c.Checks.HeloSyntax = &Check{Action: policy.MustAction("tempfail")}
		c.Checks.HeloNotOurs = &HeloNotOurs{Names: []string{"mx.ours.example", "MX2.ours.example.", "192.0.2.25", "2001:db8::25"}}
	})
	for _, tc := range []struct {
		helo               string
		fqdn, syntax, ours string
	}{
		{"client.example.net", "pass", "pass", "pass"},
		{"client_1.example.net", "pass", "pass", "pass"},
		{"localhost", "fail", "pass", "pass"},
		{"[192.0.2.7]", "pass", "pass", "pass"},
		{"[IPv6:2001:db8::7]", "pass", "pass", "pass"},
		{"[192.0.2.999]", "pass", "fail", "pass"},
		{"192.0.2.7", "pass", "fail", "pass"},
		{"-bad.example.net", "pass", "fail", "pass"},
		{"bad-.example.net", "pass", "fail", "pass"},
		{"a..example.net", "fail", "fail", "pass"},
		{"héllo.example.net", "pass", "fail", "pass"},
		{"bad name.example", "pass", "fail", "pass"},
		{strings.Repeat("x", 64) + ".example", "pass", "fail", "pass"},
		{"MX.Ours.Example.", "pass", "pass", "fail"},
		{"mx2.ours.example", "pass", "pass", "fail"},
		{"[192.0.2.25]", "pass", "pass", "fail"},
		{"192.0.2.25", "pass", "fail", "fail"},
		{"[IPv6:2001:DB8::25]", "pass", "pass", "fail"},
		{"", "", "", ""}, // no HELO: the MTA's smtpd_helo_required decides
	} {
		s := session{ip: "198.51.100.1", helo: tc.helo, sender: "a@b.example"}
		vs, m := mail(c, s)
		act := func(v string, a policy.Action) policy.Action {
			if v == "fail" {
				return a
			}
			return none
		}
		expect(t, m, vs, "require_fqdn_helo", tc.fqdn, act(tc.fqdn, reject))
		expect(t, m, vs, "helo_syntax", tc.syntax, act(tc.syntax, tempfail))
		expect(t, m, vs, "helo_not_ours", tc.ours, act(tc.ours, reject))
	}
	s := session{ip: "198.51.100.1", helo: "localhost", sender: "a@b.example"}
	wantReply(t, c, s, "require_fqdn_helo", "550 5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname")
	s.helo = "bad name.example"
	wantReply(t, c, s, "helo_syntax", "451 4.5.2 <bad name.example>: Helo command rejected: Invalid name")
	// we may call ourselves what we are
	vs, m := mail(c, session{ip: "192.0.2.25", helo: "mx.ours.example", sender: "a@b.example"})
	expect(t, m, vs, "helo_not_ours", "", none)

	// the default list is the host name
	c = checker(t, newFake(), func(c *Config) { c.Checks.HeloNotOurs = &HeloNotOurs{} })
	vs, m = mail(c, session{ip: "198.51.100.1", helo: "mx.ours.example", sender: "a@b.example"})
	expect(t, m, vs, "helo_not_ours", "fail", reject)
}

func TestClientRDNS(t *testing.T) {
	f := newFake()
	f.ptr["192.0.2.1"] = []string{"mail.example.com."}
	f.addIP("mail.example.com", "192.0.2.1", "2001:db8::1")
	f.ptr["192.0.2.2"] = []string{"liar.example.com."}
	f.addIP("liar.example.com", "192.0.2.99")
	f.ptr["192.0.2.3"] = []string{"other.example.com.", "slow.example.com."}
	f.addIP("other.example.com", "192.0.2.98")
	f.txt["slow.example.com"] = nil
	f.fail("A", "slow.example.com", errTimeout)
	f.ptr["192.0.2.4"] = []string{"a.example.", "b.example."}
	f.addIP("a.example", "192.0.2.97")
	f.addIP("b.example", "192.0.2.4")
	f.ptr["2001:db8::1"] = []string{"mail.example.com."}
	f.fail("PTR", "5.2.0.192.in-addr.arpa.", errServFail)
	f.fail("PTR", "6.2.0.192.in-addr.arpa.", errTimeout)

	exists := checker(t, f, func(c *Config) { c.Checks.ClientRDNS = &ClientRDNS{} })
	fcrdns := checker(t, f, func(c *Config) {
		c.Checks.ClientRDNS = &ClientRDNS{Require: "fcrdns"}
	})
	for _, tc := range []struct {
		ip             string
		exists, fcrdns string
	}{
		{"192.0.2.1", "pass", "pass"},
		{"192.0.2.2", "pass", "fail"},      // PTR does not resolve back
		{"192.0.2.3", "pass", "temperror"}, // one name fails, one times out
		{"192.0.2.4", "pass", "pass"},      // the second name confirms
		{"192.0.2.5", "temperror", "temperror"},
		{"192.0.2.6", "temperror", "temperror"},
		{"192.0.2.7", "fail", "fail"}, // no PTR
		{"2001:db8::1", "pass", "pass"},
	} {
		for _, run := range []struct {
			c    *Checker
			want string
		}{{exists, tc.exists}, {fcrdns, tc.fcrdns}} {
			s := session{ip: tc.ip, helo: "h.example", sender: "a@b.example"}
			vs, m := mail(run.c, s)
			action := map[string]policy.Action{"pass": none, "fail": reject, "temperror": tempfail}[run.want]
			expect(t, m, vs, "client_rdns", run.want, action)
		}
	}
	s := session{ip: "192.0.2.7", helo: "h.example", sender: "a@b.example"}
	wantReply(t, exists, s, "client_rdns", "550 5.7.25 Client host rejected: cannot find your reverse hostname, [192.0.2.7]")
	s.ip = "192.0.2.6"
	wantReply(t, fcrdns, s, "client_rdns", "451 4.7.25 Client host rejected: cannot find your hostname, [192.0.2.6]")
	// no address (unix socket, unknown client): nothing to check
	vs, m := mail(exists, session{helo: "h.example", sender: "a@b.example"})
	expect(t, m, vs, "client_rdns", "", none)
}

func TestDNSBL(t *testing.T) {
	f := newFake()
	f.addIP("2.0.0.127.zen.example", "127.0.0.2")
	f.addIP("10.2.0.192.zen.example", "127.0.0.4", "127.0.0.10")
	f.addIP("11.2.0.192.zen.example", "192.0.2.200") // a wildcard gone wrong
	f.addIP("12.2.0.192.zen.example", "127.255.255.254")
	f.fail("A", "13.2.0.192.zen.example", errTimeout)
	f.fail("A", "13.2.0.192.bl.example", errServFail)
	f.addIP("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.example", "127.0.0.3")
	f.addIP("10.2.0.192.bl.example", "127.0.0.2")
	c := checker(t, f, func(c *Config) {
		c.Checks.DNSBL = []DNSBL{
			{Zone: "zen.example"},
			{Zone: "bl.example.", DNSCheck: DNSCheck{Check: Check{Action: policy.MustAction("tag")}, TempError: policy.MustAction("tempfail")}, Codes: []string{"127.0.0.3"}},
		}
	})
	for _, tc := range []struct {
		ip       string
		zen, bl  string
		zenA, bA policy.Action
	}{
		{"127.0.0.2", "listed", "pass", reject, none},
		{"192.0.2.10", "listed", "pass", reject, none}, // bl answers 127.0.0.2, not one of its codes
		{"192.0.2.11", "pass", "pass", none, none},
		{"192.0.2.12", "temperror", "pass", none, none}, // the list refused the query
		{"192.0.2.13", "temperror", "temperror", none, tempfail},
		{"192.0.2.14", "pass", "pass", none, none},
		{"2001:db8::1", "listed", "pass", reject, none},
	} {
		s := session{ip: tc.ip, helo: "h.example", sender: "a@b.example"}
		vs, m := mail(c, s)
		r := expect(t, m, vs, "dnsbl:zen.example", tc.zen, tc.zenA)
		expect(t, m, vs, "dnsbl:bl.example", tc.bl, tc.bA)
		if tc.ip == "192.0.2.10" && !strings.Contains(r.Detail, "127.0.0.4,127.0.0.10") {
			t.Errorf("detail %q lacks the answers", r.Detail)
		}
	}
	s := session{ip: "127.0.0.2", helo: "h.example", sender: "a@b.example"}
	f.calls = nil
	wantReply(t, c, s, "dnsbl:zen.example", "550 5.7.1 Service unavailable; client host [127.0.0.2] blocked using zen.example")
	if got := f.called("A 2.0.0.127."); len(got) != 2 {
		t.Errorf("queries %v, want one per zone", got)
	}
	// a listing with the codes of bl.example
	f.addIP("10.2.0.192.bl.example", "127.0.0.3")
	vs, m := mail(c, session{ip: "192.0.2.10", helo: "h.example", sender: "a@b.example"})
	expect(t, m, vs, "dnsbl:bl.example", "listed", tag)
}

// TestDNSBLZonesInParallel proves the zones are asked at once: each lookup
// waits until all have arrived, which never happens if they are asked one
// after the other (the lookups then time out and the test fails).
func TestDNSBLZonesInParallel(t *testing.T) {
	f := newFake()
	var arrived sync.WaitGroup
	arrived.Add(3)
	all := make(chan struct{})
	go func() { arrived.Wait(); close(all) }()
	f.hook = func(ctx context.Context, qtype, name string) error {
		if !strings.HasPrefix(name, "1.2.0.192.") {
			return nil
		}
		arrived.Done()
		select {
		case <-all:
			return nil
		case <-time.After(5 * time.Second):
			return errTimeout
		}
	}
	for _, z := range []string{"a.example", "b.example", "c.example"} {
		f.addIP("1.2.0.192."+z, "127.0.0.2")
	}
	c := checker(t, f, func(c *Config) {
		c.Checks.DNSBL = []DNSBL{{Zone: "a.example"}, {Zone: "b.example"}, {Zone: "c.example"}}
	})
	vs, m := mail(c, session{ip: "192.0.2.1", helo: "h.example", sender: "a@b.example"})
	for _, z := range []string{"a.example", "b.example", "c.example"} {
		expect(t, m, vs, "dnsbl:"+z, "listed", reject)
	}
}

func TestChecksBoundedByContext(t *testing.T) {
	f := newFake()
	f.hook = func(ctx context.Context, qtype, name string) error {
		<-ctx.Done() // a server that never answers
		return errTimeout
	}
	c := checker(t, f, func(c *Config) {
		c.Checks.DNSBL = []DNSBL{{Zone: "zen.example", DNSCheck: DNSCheck{TempError: policy.MustAction("tempfail")}}}
		c.Checks.SenderDomainExists = &DNSCheck{}
		c.SPF.Enabled = true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	var m Message
	vs := c.Mail(ctx, session{ip: "192.0.2.1", helo: "h.example", sender: "a@b.example"}.facts(), nil, &m)
	expect(t, &m, vs, "dnsbl:zen.example", "temperror", tempfail)
	expect(t, &m, vs, "sender_domain_exists", "temperror", tempfail)
	expect(t, &m, vs, "spf", "temperror", tag)
}

func TestPanicInCheckIsContained(t *testing.T) {
	f := newFake()
	f.hook = func(ctx context.Context, qtype, name string) error {
		if qtype == "PTR" {
			panic("resolver bug")
		}
		return nil
	}
	c := checker(t, f, func(c *Config) {
		c.Checks.ClientRDNS = &ClientRDNS{}
		c.Checks.RequireFQDNHelo = &Check{}
	})
	vs, m := mail(c, session{ip: "192.0.2.1", helo: "localhost", sender: "a@b.example"})
	expect(t, m, vs, "client_rdns", "", none)
	expect(t, m, vs, "require_fqdn_helo", "fail", reject) // the other checks still answer
}

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// An OK entry skips the checks of its own table's kind and no other:
// sender_access OK skips the sender checks and SPF, never the client
// checks (a forged whitelisted sender does not get a listed client in);
// helo_access OK skips the HELO checks.
func TestAccessLists(t *testing.T) {
	senders := writeFile(t, "senders", `
partner.example        OK
boss@corp.example      OK
corp.example           REJECT Spoofed sender {sender}
noreply@               TEMPFAIL
bulk.example           TAG newsletter
<>                     TAG bounce
old.example            554 5.7.1 Gone
`)
	helos := writeFile(t, "helos", `
relay.partner.example  OK
.dyn.example           REJECT
`)
	f := newFake()
	f.addIP("1.2.0.192.zen.example", "127.0.0.2") // 192.0.2.1 is listed
	f.txt["corp.example"] = []string{"v=spf1 -all"}
	f.txt["partner.example"] = []string{"v=spf1 -all"}
	c := checker(t, f, func(c *Config) {
		c.Checks.SenderAccess = &AccessList{File: senders}
		c.Checks.HeloAccess = &AccessList{File: helos, Mode: policy.ModeTag}
		c.Checks.DNSBL = []DNSBL{{Zone: "zen.example", DNSCheck: DNSCheck{Check: Check{Action: policy.MustAction("reject")}}}}
		c.Checks.RequireFQDNHelo = &Check{}
		c.Checks.RequireFQDNSender = &Check{}
		c.SPF.Enabled = true
	})
	for _, tc := range []struct {
		helo, sender string
		check, value string
		action       policy.Action
		reply        string
		skipped      []string // checks the OK skips
		ran          []string // checks that run whatever the table says
	}{
		{"h.example", "a@partner.example", "sender_access", "ok", none, "", []string{"spf", "require_fqdn_sender"}, []string{"dnsbl:zen.example", "require_fqdn_helo"}},
		{"h.example", "boss@corp.example", "sender_access", "ok", none, "", []string{"spf"}, []string{"dnsbl:zen.example"}},
		{"h.example", "x@corp.example", "sender_access", "reject", reject, "550 5.7.1 <x@corp.example>: Sender address rejected: Spoofed sender x@corp.example", nil, []string{"spf", "dnsbl:zen.example"}},
		{"h.example", "noreply@any.example", "sender_access", "tempfail", tempfail, "451 4.7.1 <noreply@any.example>: Sender address rejected: Access denied", nil, nil},
		{"h.example", "x@old.example", "sender_access", "reject", reject, "554 5.7.1 <x@old.example>: Sender address rejected: Gone", nil, nil},
		{"h.example", "a@bulk.example", "sender_access", "tag", tag, "", nil, nil},
		{"h.example", "", "sender_access", "tag", tag, "", nil, nil},
		{"relay.partner.example", "x@corp.example", "helo_access", "ok", none, "", []string{"require_fqdn_helo"}, []string{"dnsbl:zen.example", "spf", "sender_access"}},
		{"host9.dyn.example", "a@b.example", "helo_access", "reject", reject, "550 5.7.1 <host9.dyn.example>: Helo command rejected: Access denied", nil, []string{"require_fqdn_helo"}},
	} {
		s := session{ip: "192.0.2.1", helo: tc.helo, sender: tc.sender}
		vs, m := mail(c, s)
		r := expect(t, m, vs, tc.check, tc.value, tc.action)
		if tc.reply != "" {
			v, _ := verdict(vs, tc.check)
			if got := reply(v, s); got != tc.reply {
				t.Errorf("%s: reply %q, want %q", tc.sender, got, tc.reply)
			}
		}
		for _, name := range tc.skipped {
			if _, ok := result(m, name); ok {
				t.Errorf("%s/%s: %s ran after an OK that skips it", s.helo, s.sender, name)
			}
		}
		for _, name := range tc.ran {
			if _, ok := result(m, name); !ok {
				t.Errorf("%s/%s: %s did not run; an OK of another kind must not skip it", s.helo, s.sender, name)
			}
		}
		if tc.check == "helo_access" && tc.value != "ok" && r.Mode != policy.ModeTag {
			t.Errorf("helo_access mode %v, want tag", r.Mode)
		}
	}
	// The listed client with a whitelisted, forged sender is refused.
	vs, _ := mail(c, session{ip: "192.0.2.1", helo: "h.example", sender: "forged@partner.example"})
	if v, ok := verdict(vs, "dnsbl:zen.example"); !ok || v.Action != reject {
		t.Errorf("listed client, whitelisted sender: verdicts %+v; want the dnsbl to refuse", vs)
	}
	if f.called("TXT") == nil {
		t.Error("SPF never asked DNS")
	}

	// errors at load name the file and line
	bad := writeFile(t, "bad", "ok.example OK\nbad.example REJECT {nope}\n")
	cfg := &Config{AuthservID: "mx.sluice.test", Checks: ChecksConfig{SenderAccess: &AccessList{File: bad}}}
	cfg.Defaults()
	if _, err := newChecker(cfg, nil, f, 0); err == nil || !strings.Contains(err.Error(), bad+":2:") {
		t.Errorf("bad placeholder: %v, want it to name %s:2", err, bad)
	}
	cfg.Checks.SenderAccess.File = bad + ".missing"
	if _, err := newChecker(cfg, nil, f, 0); err == nil || !strings.Contains(err.Error(), bad+".missing") {
		t.Errorf("missing file: %v", err)
	}
}

// A /regexp/ entry matches in a table named regexp: (as Postfix's
// check_helo_access regexp:), and is an error naming its line in a table
// that would read it as plain text, never a silent miss.
func TestRegexpAccessTables(t *testing.T) {
	helos := writeFile(t, "helos", "# HELO names of a bad neighbourhood\n/jp-good\\.example$/ REJECT\n")
	c := checker(t, newFake(), func(c *Config) { c.Checks.HeloAccess = &AccessList{File: "regexp:" + helos} })
	s := session{ip: "192.0.2.1", helo: "mail1.jp-good.example", sender: "a@b.example"}
	vs, m := mail(c, s)
	expect(t, m, vs, "helo_access", "reject", reject)
	cfg := &Config{AuthservID: "mx.sluice.test", Checks: ChecksConfig{HeloAccess: &AccessList{File: helos}}}
	cfg.Defaults()
	if _, err := newChecker(cfg, nil, newFake(), 0); err == nil || !strings.Contains(err.Error(), helos+":2:") || !strings.Contains(err.Error(), "regexp:") {
		t.Errorf("a regexp in a plain table: %v, want an error at %s:2 that says regexp:", err, helos)
	}
}

// client_access answers at connect, tables in order: REJECT refuses,
// DELAY pauses, TAG marks every message; OK skips the client checks at
// MAIL FROM for every message of the session, and nothing else.
func TestClientAccess(t *testing.T) {
	cidr := writeFile(t, "clients.cidr", `
192.0.2.0/24      OK
198.51.100.7      DELAY 3s
198.51.100.0/24   REJECT Known spam network
203.0.113.0/24    TAG from a country we watch
`)
	names := writeFile(t, "clients.re", "/\\.dyn\\.example$/ 450 4.7.25 no dynamic hosts\n")
	f := newFake()
	f.addIP("1.2.0.192.zen.example", "127.0.0.2")
	f.txt["spf.example"] = []string{"v=spf1 -all"}
	c, err := New(cfgWith(func(c *Config) {
		c.Checks.ClientAccess = AccessTables{{File: cidr}, {File: "regexp:" + names, Mode: policy.ModeTag}}
		c.Checks.DNSBL = []DNSBL{{Zone: "zen.example", DNSCheck: DNSCheck{Check: Check{Action: policy.MustAction("reject")}}}}
		c.Checks.RequireFQDNSender = &Check{}
		c.SPF.Enabled = true
	}), nil, WithResolver(f), WithMaxDelay(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ip, name string
		value    string
		action   policy.Action
		mode     policy.Mode
		reply    string
		delay    time.Duration
	}{
		{"192.0.2.1", "unknown", "ok", none, 0, "", 0},
		{"198.51.100.7", "unknown", "delay", policy.ActionDelay, 0, "", 3 * time.Second},
		{"198.51.100.8", "unknown", "reject", reject, 0, "550 5.7.1 Client host rejected: Known spam network", 0},
		{"203.0.113.9", "unknown", "tag", tag, 0, "", 0},
		{"10.0.0.1", "host.dyn.example", "tempfail", tempfail, policy.ModeTag, "450 4.7.25 Client host rejected: no dynamic hosts", 0},
		{"10.0.0.1", "mx.example", "", none, 0, "", 0},
	} {
		fs := &policy.Facts{ClientIP: netip.MustParseAddr(tc.ip), ClientName: tc.name}
		var cl Client
		vs := c.Client(fs, &cl)
		rs := cl.Results()
		if tc.value == "" {
			if len(vs) != 0 || len(rs) != 0 {
				t.Errorf("%s: %v %v, want nothing", tc.ip, vs, rs)
			}
			continue
		}
		if len(rs) != 1 || rs[0].Check != "client_access" || rs[0].Value != tc.value {
			t.Errorf("%s: results %+v, want client_access=%s", tc.ip, rs, tc.value)
			continue
		}
		if tc.action == none {
			if len(vs) != 0 {
				t.Errorf("%s: verdicts %+v for an OK", tc.ip, vs)
			}
		} else if len(vs) != 1 || vs[0].Action != tc.action || vs[0].Mode != tc.mode || vs[0].Delay != tc.delay || vs[0].Key != tc.ip {
			t.Errorf("%s: verdicts %+v, want %s mode %s delay %v", tc.ip, vs, tc.action, tc.mode, tc.delay)
		} else if tc.reply != "" {
			if got := vs[0].Reply.Render(&vs[0], &policy.Env{ClientIP: tc.ip}); got != tc.reply {
				t.Errorf("%s: reply %q, want %q", tc.ip, got, tc.reply)
			}
		}
		// At MAIL FROM the client checks run unless the table said OK;
		// the sender checks run either way.
		var m Message
		fs.Sender = "a@spf.example"
		c.Mail(context.Background(), fs, &cl, &m)
		if _, ok := result(&m, "client_access"); !ok {
			t.Errorf("%s: the message's results lack client_access", tc.ip)
		}
		_, dnsbl := result(&m, "dnsbl:zen.example")
		if dnsbl == (tc.value == "ok") {
			t.Errorf("%s (%s): dnsbl ran %v", tc.ip, tc.value, dnsbl)
		}
		if _, spf := m.SPF(); !spf {
			t.Errorf("%s: a client table skipped SPF", tc.ip)
		}
		if tc.value == "tag" {
			var shown []string
			for _, h := range c.Headers(&m, nil) {
				if h.Name == CheckHeader {
					shown = append(shown, h.Value)
				}
			}
			if len(shown) == 0 || !strings.HasPrefix(shown[0], "client_access=tag action=tag (203.0.113.9 matched 203.0.113.0/24 at "+cidr+":5: from a country we watch)") {
				t.Errorf("tagged client: X-Sluice-Check %q", shown)
			}
		}
	}
	// A trusted client is asked nothing.
	var cl Client
	if vs := c.Client(&policy.Facts{ClientIP: netip.MustParseAddr("198.51.100.8"), Trusted: true}, &cl); len(vs) != 0 || len(cl.Results()) != 0 {
		t.Errorf("trusted client: %v %v", vs, cl.Results())
	}
	// A DELAY above max_delay is an error with its line.
	if _, err := New(cfgWith(func(c *Config) { c.Checks.ClientAccess = AccessTables{{File: cidr}} }), nil,
		WithResolver(f), WithMaxDelay(2*time.Second)); err == nil || !strings.Contains(err.Error(), cidr+":3: DELAY 3s is above max_delay (2s)") {
		t.Errorf("DELAY above max_delay: %v", err)
	}
}

func TestTrustedAndAuthenticated(t *testing.T) {
	f := newFake()
	f.txt["example.com"] = []string{"v=spf1 -all"}
	edit := func(skip bool) func(*Config) {
		return func(c *Config) {
			c.Checks.RequireFQDNHelo = &Check{}
			c.Checks.SkipAuthenticated = &skip
			c.SPF.Enabled = true
			c.SPF.SkipAuthenticated = &skip
			c.SPF.Fail = policy.MustAction("reject")
		}
	}
	skipping := checker(t, f, edit(true))
	checking := checker(t, f, edit(false))
	s := session{ip: "192.0.2.1", helo: "localhost", sender: "a@example.com"}

	vs, m := mail(skipping, session{ip: s.ip, helo: s.helo, sender: s.sender, trusted: true})
	if len(vs) != 0 || len(m.Results()) != 0 {
		t.Errorf("trusted client: %v %v", vs, m.Results())
	}
	vs, m = mail(skipping, session{ip: s.ip, helo: s.helo, sender: s.sender, user: "alice"})
	if len(vs) != 0 || len(m.Results()) != 0 {
		t.Errorf("authenticated client with skip_authenticated: %v %v", vs, m.Results())
	}
	vs, m = mail(checking, session{ip: s.ip, helo: s.helo, sender: s.sender, user: "alice"})
	expect(t, m, vs, "require_fqdn_helo", "fail", reject)
	expect(t, m, vs, "spf", "fail", reject)
	vs, m = mail(skipping, s)
	expect(t, m, vs, "spf", "fail", reject)
}

func TestEnabled(t *testing.T) {
	if checker(t, newFake(), func(*Config) {}).Enabled() {
		t.Error("nothing configured, but Enabled")
	}
	if !checker(t, newFake(), func(c *Config) { c.Checks.HeloSyntax = &Check{} }).Enabled() {
		t.Error("helo_syntax configured, but not Enabled")
	}
	if !checker(t, newFake(), func(c *Config) { c.SPF.Enabled = true }).Enabled() {
		t.Error("spf enabled, but not Enabled")
	}
}
