package auth

import (
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/authres"

	"sluice/policy"
)

func spfFake() *fakeDNS {
	f := newFake()
	f.txt["pass.example"] = []string{"v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"}
	f.txt["fail.example"] = []string{"v=spf1 -all"}
	f.txt["soft.example"] = []string{"v=spf1 ~all"}
	f.txt["neutral.example"] = []string{"v=spf1 ?all"}
	f.txt["none.example"] = []string{"some other text"}
	f.txt["perm.example"] = []string{"v=spf1 bogus:term -all"}
	f.fail("TXT", "servfail.example", errServFail)
	f.fail("TXT", "timeout.example", errTimeout)
	f.txt["amech.example"] = []string{"v=spf1 a:host.amech.example -all"}
	f.addIP("host.amech.example", "192.0.2.50")
	f.fail("AAAA", "host.amech.example", errTimeout)
	f.txt["helo.example"] = []string{"v=spf1 ip4:192.0.2.1 -all"}
	f.txt["late.example"] = []string{"v=spf1 ip4:192.0.2.1 -all moo"}
	return f
}

func TestSPFResults(t *testing.T) {
	f := spfFake()
	c := checker(t, f, func(c *Config) { c.SPF.Enabled = true })
	for _, tc := range []struct {
		ip, sender, want string
	}{
		{"192.0.2.1", "a@pass.example", "pass"},
		{"2001:db8::5", "a@pass.example", "pass"},
		{"198.51.100.1", "a@pass.example", "fail"},
		{"192.0.2.1", "a@fail.example", "fail"},
		{"192.0.2.1", "a@soft.example", "softfail"},
		{"192.0.2.1", "a@neutral.example", "neutral"},
		{"192.0.2.1", "a@none.example", "none"},
		{"192.0.2.1", "a@nxdomain.example", "none"},
		{"192.0.2.1", "a@perm.example", "permerror"},
		// a syntax error after the match is still an error (§4.6)
		{"192.0.2.1", "a@late.example", "permerror"},
		{"192.0.2.1", "a@servfail.example", "temperror"},
		{"192.0.2.1", "a@timeout.example", "temperror"},
		// an IPv4 client needs only A records, so a timeout on AAAA
		// does not matter (RFC 7208 §5.3)
		{"192.0.2.50", "a@amech.example", "pass"},
		{"192.0.2.1", "a@localhost", "none"},           // single label: no DNS (§4.3)
		{"192.0.2.1", "a@[192.0.2.1]", "none"},         // address literal
		{"192.0.2.1", "@pass.example", "pass"},         // no local part: postmaster
		{"::ffff:192.0.2.1", "a@pass.example", "pass"}, // IPv4-mapped
	} {
		vs, m := mail(c, session{ip: tc.ip, helo: "client.example", sender: tc.sender})
		got, ran := m.SPF()
		if !ran || got != tc.want {
			t.Errorf("%s from %s: spf %q (ran %v), want %s", tc.sender, tc.ip, got, ran, tc.want)
			continue
		}
		// every result but pass is tagged by default
		wantAction := tag
		if tc.want == "pass" {
			wantAction = none
		}
		expect(t, m, vs, "spf", tc.want, wantAction)
	}
	if q := f.called("TXT localhost"); len(q) != 0 {
		t.Errorf("asked DNS about a single-label domain: %v", q)
	}
}

func TestSPFNullSenderUsesHelo(t *testing.T) {
	c := checker(t, spfFake(), func(c *Config) { c.SPF.Enabled = true })
	vs, m := mail(c, session{ip: "192.0.2.1", helo: "helo.example", sender: ""})
	expect(t, m, vs, "spf", "pass", none)
	hs := c.Headers(m, nil)
	ar := header(hs, "Authentication-Results")
	if want := "mx.sluice.test; spf=pass smtp.helo=helo.example"; ar != want {
		t.Errorf("Authentication-Results %q, want %q", ar, want)
	}
	rs := header(hs, "Received-SPF")
	if !strings.HasPrefix(rs, "pass (mx.sluice.test: domain of postmaster@helo.example designates 192.0.2.1 as permitted sender)") ||
		!strings.Contains(rs, "identity=helo") || strings.Contains(rs, "envelope-from") {
		t.Errorf("Received-SPF %q", rs)
	}
	// a HELO that is no domain gives none without a lookup
	vs, m = mail(c, session{ip: "192.0.2.1", helo: "[192.0.2.1]", sender: ""})
	expect(t, m, vs, "spf", "none", tag)
	// no client address (unix socket): SPF cannot run
	_, m = mail(c, session{helo: "helo.example", sender: "a@pass.example"})
	if _, ran := m.SPF(); ran {
		t.Error("SPF ran without a client address")
	}
}

func TestSPFActionsAndReplies(t *testing.T) {
	c := checker(t, spfFake(), func(c *Config) {
		c.SPF.Enabled = true
		c.SPF.Fail = policy.MustAction("reject")
		c.SPF.SoftFail = policy.MustAction("none")
		c.SPF.TempError = policy.MustAction("tempfail")
		c.SPF.PermError = policy.MustAction("reject")
		c.SPF.Reply.PermError = policy.MustReply("550 5.7.24 Fix your SPF record, {sender}")
	})
	for _, tc := range []struct {
		sender string
		action policy.Action
		reply  string
	}{
		{"a@fail.example", reject, "550 5.7.23 SPF fail: [192.0.2.1] is not allowed to send mail as a@fail.example"},
		{"a@soft.example", none, ""},
		{"a@neutral.example", tag, ""},
		{"a@timeout.example", tempfail, "451 4.7.24 SPF temperror: cannot check a@timeout.example now; try again later"},
		{"a@perm.example", reject, "550 5.7.24 Fix your SPF record, a@perm.example"},
	} {
		s := session{ip: "192.0.2.1", helo: "client.example", sender: tc.sender}
		vs, m := mail(c, s)
		r, _ := result(m, "spf")
		expect(t, m, vs, "spf", r.Value, tc.action)
		if v, ok := verdict(vs, "spf"); ok && tc.reply != "" {
			if got := reply(v, s); got != tc.reply {
				t.Errorf("%s: reply %q, want %q", tc.sender, got, tc.reply)
			}
		}
	}
}

func header(hs []Header, name string) string {
	for _, h := range hs {
		if h.Name == name {
			return h.Value
		}
	}
	return ""
}

func TestHeaders(t *testing.T) {
	f := spfFake()
	f.addIP("1.2.0.192.zen.example", "127.0.0.2")
	f.ptr["192.0.2.1"] = []string{"mail.pass.example."}
	f.addIP("mail.pass.example", "192.0.2.1")
	c := checker(t, f, func(c *Config) {
		c.SPF.Enabled = true
		c.SPF.Fail = policy.MustAction("reject")
		c.Checks.DNSBL = []DNSBL{{Zone: "zen.example"}}
		c.Checks.ClientRDNS = &ClientRDNS{Require: "fcrdns"}
		c.Checks.RequireFQDNHelo = &Check{Action: policy.MustAction("reject"), Mode: policy.ModeTag}
	})
	s := session{ip: "192.0.2.1", helo: "localhost", sender: "alice@pass.example"}
	vs, m := mail(c, s)
	hs := c.Headers(m, nil)
	for _, h := range hs {
		t.Logf("%s: %s", h.Name, h.Value)
	}
	if got, want := header(hs, "Authentication-Results"),
		"mx.sluice.test; spf=pass smtp.mailfrom=alice@pass.example; iprev=pass policy.iprev=192.0.2.1"; got != want {
		t.Errorf("Authentication-Results\n got %q\nwant %q", got, want)
	}
	if got, want := header(hs, "Received-SPF"),
		`pass (mx.sluice.test: domain of alice@pass.example designates 192.0.2.1 as permitted sender) client-ip=192.0.2.1; envelope-from="alice@pass.example"; helo=localhost; receiver=mx.sluice.test; identity=mailfrom; mechanism=ip`; got != want {
		t.Errorf("Received-SPF\n got %q\nwant %q", got, want)
	}
	var checks []string
	for _, h := range hs {
		if h.Name == CheckHeader {
			checks = append(checks, h.Value)
		}
	}
	want := []string{
		"dnsbl:zen.example=listed action=reject (192.0.2.1 listed in zen.example: 127.0.0.2)",
		`require_fqdn_helo=fail action=reject mode=tag (HELO "localhost" is not a fully-qualified domain name)`,
	}
	if strings.Join(checks, "\n") != strings.Join(want, "\n") {
		t.Errorf("X-Sluice-Check\n got %q\nwant %q", checks, want)
	}

	// The verdicts go through policy.Decide like any other: in global tag
	// mode nothing is refused and both show as tags.
	pc := &policy.Config{Mode: policy.ModeTag}
	pc.Defaults()
	d := pc.Decide(policy.StageMail, vs, &policy.Env{ClientIP: s.ip, Sender: s.sender})
	if d.Refused() || len(d.Tags) != 2 {
		t.Errorf("tag mode: %+v", d)
	}
	pc.Mode = policy.ModeEnforce
	d = pc.Decide(policy.StageMail, vs, &policy.Env{ClientIP: s.ip, Sender: s.sender})
	if d.Action != reject || d.Reply != "550 5.7.1 Service unavailable; client host [192.0.2.1] blocked using zen.example" {
		t.Errorf("enforce: %v %q", d.Action, d.Reply)
	}
}

// TestHostileInputInHeaders: what a client sends reaches headers escaped,
// on one line, with the structure of each header intact.
func TestHostileInputInHeaders(t *testing.T) {
	f := spfFake()
	c := checker(t, f, func(c *Config) {
		c.SPF.Enabled = true
		c.Checks.RequireFQDNHelo = &Check{Action: policy.MustAction("tag")}
	})
	for _, s := range []session{
		{ip: "192.0.2.1", helo: "evil\r\nX-Injected: yes", sender: "a\"b\\\"c (d) ;e@fail.example"},
		{ip: "192.0.2.1", helo: "bad\\\"; spf=pass", sender: "x\"; spf=pass x@fail.example"},
		{ip: "192.0.2.1", helo: strings.Repeat("h", 10000), sender: strings.Repeat("s", 10000) + "@fail.example"},
		{ip: "192.0.2.1", helo: "\xff\xfe\x00", sender: "\x00\xc3@fail.example"},
		{ip: "192.0.2.1", helo: "ok.example", sender: ""},
	} {
		_, m := mail(c, s)
		hs := c.Headers(m, nil)
		if len(hs) < 2 {
			t.Fatalf("headers %v", hs)
		}
		for _, h := range hs {
			if len(h.Value) > 1000 {
				t.Errorf("%s: %d bytes", h.Name, len(h.Value))
			}
			for i := 0; i < len(h.Value); i++ {
				if ch := h.Value[i]; ch < 0x20 || ch >= 0x7f {
					t.Errorf("%s: byte %#x at %d in %q", h.Name, ch, i, h.Value)
					break
				}
			}
		}
		// the SPF result is what it is, however the sender tries
		id, results, err := authres.Parse(header(hs, "Authentication-Results"))
		if err != nil || id != "mx.sluice.test" || len(results) != 1 {
			t.Errorf("Authentication-Results %q: %v %v %v", header(hs, "Authentication-Results"), id, results, err)
			continue
		}
		if r, ok := results[0].(*authres.SPFResult); !ok || r.Value == authres.ResultPass {
			t.Errorf("forged result: %q", header(hs, "Authentication-Results"))
		}
		if rs := header(hs, "Received-SPF"); !strings.HasPrefix(rs, "fail ") && !strings.HasPrefix(rs, "none ") {
			t.Errorf("Received-SPF %q", rs)
		}
		if strings.Count(header(hs, "Received-SPF"), "receiver=mx.sluice.test;") != 1 {
			t.Errorf("Received-SPF structure broken: %q", header(hs, "Received-SPF"))
		}
	}
}

func TestForged(t *testing.T) {
	c := checker(t, newFake(), func(*Config) {})
	for _, tc := range []struct {
		name, value string
		forged      bool
	}{
		{"Authentication-Results", "mx.sluice.test; spf=pass smtp.mailfrom=a@b", true},
		{"authentication-results", "MX.Sluice.Test; none", true},
		{"Authentication-Results", "  (forged) mx.sluice.test 1; spf=pass", true},
		{"Authentication-Results", "\r\n\tmx.sluice.test;spf=pass", true},
		{"Authentication-Results", `"mx.sluice.test"; spf=pass`, true},
		{"Authentication-Results", "mx.sluice.test.evil; spf=pass", false},
		{"Authentication-Results", "other.example; spf=pass", false},
		{"Authentication-Results", "(mx.sluice.test) other.example; spf=pass", false},
		{"Authentication-Results", "", false},
		{"X-Authentication-Results", "mx.sluice.test; spf=pass", false},
		{"Received-SPF", "pass (mx.sluice.test: ...)", false},
	} {
		if got := c.Forged(tc.name, tc.value); got != tc.forged {
			t.Errorf("Forged(%q, %q) = %v, want %v", tc.name, tc.value, got, tc.forged)
		}
	}
}

// TestDryRunChangesNothing: a check in dry-run mode gives a verdict (for
// logs and metrics) but no header.
func TestDryRunChangesNothing(t *testing.T) {
	c := checker(t, newFake(), func(c *Config) {
		c.Checks.RequireFQDNHelo = &Check{Action: policy.MustAction("reject"), Mode: policy.ModeDryRun}
	})
	vs, m := mail(c, session{ip: "192.0.2.1", helo: "localhost", sender: "a@b.example"})
	if v, ok := verdict(vs, "require_fqdn_helo"); !ok || v.Mode != policy.ModeDryRun {
		t.Fatalf("verdict %+v %v", v, ok)
	}
	if hs := c.Headers(m, nil); len(hs) != 0 {
		t.Errorf("headers in dry-run: %v", hs)
	}
}
