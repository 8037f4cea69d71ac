package e2e

// DKIM and DMARC through real Postfix and real Sendmail: messages signed
// in the test with go-msgauth's signer (RSA 2048, ed25519, RFC 8463's
// example), keys and _dmarc records served by the loopback DNS server,
// each verdict read from the delivered message's Authentication-Results
// or from the SMTP reply.

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/authres"

	"sluice/auth/dkim/dkimtest"
	"sluice/test/dnstest"
	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

var (
	dkimRSA    = dkimtest.RSA2048("rsa.example", "r2048")
	dkimEd     = dkimtest.Ed25519("ed.example", "ed")
	dkimStrict = dkimtest.Ed25519("mail.strict.example", "s") // signs for a subdomain of strict.example
	dkimSlow   = dkimtest.Ed25519("slowkey.example", "slow")  // its key lookup times out
)

// dkimDNS serves the keys, SPF for the clients the MTAs show (Postfix:
// 198.51.100.7 by XCLIENT; Sendmail: 127.0.0.1) and the DMARC records.
func dkimDNS(t *testing.T) *dnstest.Server {
	spf := `"v=spf1 ip4:198.51.100.0/24 ip4:127.0.0.1 -all"`
	z := dnstest.NewZone().MustAddText(
		dkimRSA.ZoneLine(), dkimEd.ZoneLine(), dkimStrict.ZoneLine(), dkimSlow.ZoneLine(),
		"brisbane._domainkey.football.example.com. 300 IN TXT \""+dkimtest.RFC8463Ed25519TXT+"\"",
		"test._domainkey.football.example.com. 300 IN TXT \""+dkimtest.RFC8463RSATXT+"\"",
		"rsa.example. 300 IN TXT "+spf,
		"bounces.example. 300 IN TXT "+spf,
		`_dmarc.rsa.example. 300 IN TXT "v=DMARC1; p=reject"`,
		`_dmarc.ed.example. 300 IN TXT "v=DMARC1; p=reject"`,
		`_dmarc.strict.example. 300 IN TXT "v=DMARC1; p=reject; adkim=s; aspf=s"`,
		`_dmarc.org.example. 300 IN TXT "v=DMARC1; p=reject; sp=quarantine"`,
		`_dmarc.pct0.example. 300 IN TXT "v=DMARC1; p=reject; pct=0"`,
		`_dmarc.none.example. 300 IN TXT "v=DMARC1; p=none"`,
		`_dmarc.slowkey.example. 300 IN TXT "v=DMARC1; p=none"`,
	)
	z.Fault("slow._domainkey.slowkey.example", dnstest.AnyType, dnstest.Timeout)
	z.Fault("_dmarc.slowrecord.example", dnstest.AnyType, dnstest.Timeout)
	return dnstest.Start(t, z)
}

// dkimConfig turns SPF, DKIM and DMARC on: a DMARC fail under p=reject
// is refused, a DKIM key lookup that times out is tempfailed; every
// other result is only tagged (the defaults).
func dkimConfig(srv *dnstest.Server) string {
	return fmt.Sprintf(`authserv_id = %q
trusted = []

[log]
level = "info"

[dns]
servers = [%q]
timeout = "1s"

[spf]
enabled = true

[dkim]
enabled = true
temperror = "tempfail"

[dmarc]
enabled = true
reject = "reject"
`, authID, srv.Addr())
}

// dkimCase is one message and what must become of it.
type dkimCase struct {
	name   string
	sender string // MAIL FROM
	msg    []byte
	// reply, when set, is the refusal wanted at end of data ("550
	// 5.7.1"); else the message is delivered with these results in our
	// Authentication-Results, in order ("dkim=pass", "dmarc=fail").
	reply   string
	results []string
	// has are more strings our Authentication-Results must hold.
	has []string
}

func signedBy(k *dkimtest.Key, from, subject string, relaxed bool) []byte {
	return dkimtest.Sign(dkimtest.Message(from, rcpt, subject, 3000), k, dkimtest.Options{Relaxed: relaxed})
}

// spacedSimple is signed simple/simple over header fields written with
// no space after the colon and with two: it verifies only if the MTA
// passed them as written (SMFIP_HDR_LEADSPC), not with one space dropped.
func spacedSimple(k *dkimtest.Key, from string) []byte {
	msg := dkimtest.Message(from, rcpt, "spaced", 1000)
	msg = bytes.Replace(msg, []byte("Subject: spaced"), []byte("Subject:  two  spaces\r\nKeywords:tight"), 1)
	return dkimtest.Sign(msg, k, dkimtest.Options{Headers: []string{"From", "To", "Subject", "Keywords", "Date", "Message-ID"}})
}

func dkimCases() []dkimCase {
	plain := func(from, subject string) []byte { return dkimtest.Message(from, rcpt, subject, 500) }
	// Its own Subject tells it apart: it signs the absence of a second
	// one (h= names subject twice).
	rfc8463 := dkimtest.RFC8463Message()
	return []dkimCase{
		// DKIM.
		{name: "rsa 2048", sender: "b@bounces.example", msg: signedBy(dkimRSA, "a@rsa.example", "rsa 2048", false),
			results: []string{"spf=pass", "dkim=pass", "dmarc=pass"}, has: []string{"header.d=rsa.example", "header.s=r2048", "header.a=rsa-sha256", "header.i=@rsa.example"}},
		{name: "ed25519", sender: "b@bounces.example", msg: signedBy(dkimEd, "a@ed.example", "ed25519", true),
			results: []string{"spf=pass", "dkim=pass", "dmarc=pass"}, has: []string{"header.a=ed25519-sha256", "header.s=ed"}},
		{name: "simple header canonicalisation, fields written with no space and with two", sender: "b@bounces.example", msg: spacedSimple(dkimEd, "a@ed.example"),
			results: []string{"spf=pass", "dkim=pass", "dmarc=pass"}},
		{name: "rfc 8463 example", sender: "b@bounces.example", msg: rfc8463,
			results: []string{"spf=pass", "dkim=pass", "dkim=pass", "dmarc=none"}, has: []string{"header.s=brisbane", "header.s=test", "header.b=/gCrinpcQOoI"}},
		{name: "changed body", sender: "b@bounces.example",
			msg:     bytes.Replace(signedBy(dkimEd, "a@none.example", "changed body", true), []byte("lazy dog"), []byte("lazy cat"), 1),
			results: []string{"spf=pass", "dkim=fail", "dmarc=fail"}},
		{name: "changed signed header", sender: "b@bounces.example",
			msg:     bytes.Replace(signedBy(dkimEd, "a@none.example", "changed header", true), []byte("Date: Mon,"), []byte("Date: Tue,"), 1),
			results: []string{"spf=pass", "dkim=fail", "dmarc=fail"}},
		{name: "unknown selector", sender: "b@bounces.example",
			msg:     signedBy(&dkimtest.Key{Domain: "ed.example", Selector: "nosuch", Signer: dkimEd.Signer}, "a@none.example", "unknown selector", true),
			results: []string{"spf=pass", "dkim=permerror", "dmarc=fail"}},
		{name: "key lookup timeout: tempfailed as configured", sender: "b@bounces.example",
			msg: signedBy(dkimSlow, "a@slowkey.example", "key timeout", true), reply: "451 4.7.1"},
		{name: "record lookup timeout: only tagged", sender: "b@bounces.example",
			msg: signedBy(dkimEd, "a@slowrecord.example", "record timeout", true), results: []string{"spf=pass", "dkim=pass", "dmarc=temperror"}},
		// The DMARC matrix.
		{name: "aligned SPF only", sender: "b@rsa.example", msg: plain("a@rsa.example", "aligned spf"),
			results: []string{"spf=pass", "dkim=none", "dmarc=pass"}, has: []string{"header.from=rsa.example", "policy.dmarc=none"}},
		{name: "aligned DKIM only", sender: "b@bounces.example", msg: signedBy(dkimRSA, "a@rsa.example", "aligned dkim", true),
			results: []string{"spf=pass", "dkim=pass", "dmarc=pass"}},
		{name: "neither: p=reject refuses", sender: "b@bounces.example", msg: plain("a@rsa.example", "neither"), reply: "550 5.7.1"},
		{name: "relaxed: a subdomain's From, the parent's signature", sender: "b@bounces.example", msg: signedBy(dkimRSA, "a@news.rsa.example", "relaxed", true),
			results: []string{"spf=pass", "dkim=pass", "dmarc=pass"}, has: []string{"header.from=news.rsa.example"}},
		{name: "strict: a subdomain's signature does not align", sender: "b@bounces.example", msg: signedBy(dkimStrict, "a@strict.example", "strict", true),
			reply: "550 5.7.1"},
		{name: "subdomain under sp=quarantine", sender: "b@bounces.example", msg: plain("a@mail.org.example", "sp"),
			results: []string{"spf=pass", "dkim=none", "dmarc=fail"}, has: []string{"header.from=mail.org.example", "policy.dmarc=quarantine"}},
		{name: "pct=0: reject applied as quarantine", sender: "b@bounces.example", msg: plain("a@pct0.example", "pct0"),
			results: []string{"spf=pass", "dkim=none", "dmarc=fail"}, has: []string{"policy.dmarc=quarantine"}},
		{name: "p=none", sender: "b@bounces.example", msg: plain("a@none.example", "p none"),
			results: []string{"spf=pass", "dkim=none", "dmarc=fail"}, has: []string{"policy.dmarc=none"}},
		{name: "two From fields: permerror", sender: "b@rsa.example", msg: append([]byte("From: <x@rsa.example>\r\n"), plain("a@rsa.example", "two from")...),
			results: []string{"spf=pass", "dkim=none", "dmarc=permerror"}},
		{name: "no record: none", sender: "b@bounces.example", msg: plain("a@norecord.example", "no record"),
			results: []string{"spf=pass", "dkim=none", "dmarc=none"}, has: []string{"header.from=norecord.example"}},
	}
}

// subjectOf is the Subject a case's message carries.
func subjectOf(msg []byte) string {
	for _, line := range strings.Split(string(msg), "\r\n") {
		if s, ok := strings.CutPrefix(line, "Subject:"); ok {
			return strings.TrimSpace(s) // as mail.Header.Get reads it back
		}
	}
	return ""
}

// checkDKIMCases runs every case through send and checks the refusals;
// then, once delivered() holds every accepted message, each delivered
// message's one Authentication-Results.
func checkDKIMCases(t *testing.T, send func(sender string, msg []byte) mta.Transaction, delivered func(n int) []mta.Message) {
	cases := dkimCases()
	accepted := 0
	for _, c := range cases {
		tr := send(c.sender, c.msg)
		if c.reply != "" {
			stage, r := tr.Refused()
			if stage != "DATA" || !strings.HasPrefix(fmt.Sprintf("%d %s", r.Code, r.Text), c.reply) {
				t.Errorf("%s: %v; want %s at end of data", c.name, tr, c.reply)
			}
			continue
		}
		if !tr.Accepted() {
			t.Errorf("%s: %v; want it delivered", c.name, tr)
			continue
		}
		accepted++
	}
	msgs := delivered(accepted)
	for _, c := range cases {
		if c.reply != "" {
			continue
		}
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			m := bySubject(t, msgs, subjectOf(c.msg))
			var ours []string
			for _, f := range fieldsOf(t, m) {
				if strings.EqualFold(f.Name, "Authentication-Results") && strings.HasPrefix(strings.ToLower(f.Value), authID+";") {
					ours = append(ours, f.Value)
				}
			}
			if len(ours) != 1 {
				t.Fatalf("%d Authentication-Results of ours, want 1: %q", len(ours), ours)
			}
			id, rs, err := authres.Parse(ours[0])
			if err != nil || id != authID {
				t.Fatalf("authres.Parse(%q): %q %v", ours[0], id, err)
			}
			var got []string
			for _, r := range rs {
				got = append(got, methodValue(r))
			}
			if strings.Join(got, " ") != strings.Join(c.results, " ") {
				t.Errorf("results %q, want %q (%s)", got, c.results, ours[0])
			}
			for _, h := range c.has {
				if !strings.Contains(ours[0], h) {
					t.Errorf("no %s in %s", h, ours[0])
				}
			}
		})
	}
}

func methodValue(r authres.Result) string {
	switch r := r.(type) {
	case *authres.SPFResult:
		return "spf=" + string(r.Value)
	case *authres.DKIMResult:
		return "dkim=" + string(r.Value)
	case *authres.DMARCResult:
		return "dmarc=" + string(r.Value)
	case *authres.GenericResult:
		return r.Method + "=" + string(r.Value)
	}
	return fmt.Sprintf("%T", r)
}

func TestPostfixDKIMDMARC(t *testing.T) {
	testenv.Require(t)
	srv := dkimDNS(t)
	sl := sluicetest.StartSluice(t, dkimConfig(srv))
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})
	checkDKIMCases(t, func(sender string, msg []byte) mta.Transaction {
		c := session(t, pf.Addr, spfClient)
		defer c.Quit()
		tr, err := c.Send(sender, []string{rcpt}, msg)
		if err != nil {
			t.Fatalf("%s: %v", subjectOf(msg), err)
		}
		return tr
	}, func(n int) []mta.Message { return pf.WaitDelivered(n, time.Minute) })
}

func TestSendmailDKIMDMARC(t *testing.T) {
	testenv.Require(t)
	srv := dkimDNS(t)
	sl := sluicetest.StartSluice(t, dkimConfig(srv))
	sm := mta.StartSendmail(t, mta.SendmailOptions{Milter: sl.Listen})
	checkDKIMCases(t, func(sender string, msg []byte) mta.Transaction {
		c := sendmailSession(t, sm)
		defer c.Quit()
		tr, err := c.Send(sender, []string{rcpt}, msg)
		if err != nil {
			t.Fatalf("%s: %v", subjectOf(msg), err)
		}
		return tr
	}, func(n int) []mta.Message { return sm.WaitDelivered(n, time.Minute) })
}

// Limits per verified identity: at most 2 messages a day per signing
// domain that passed DKIM, and 1 per DMARC-authenticated From domain,
// counted at end of message. Unsigned mail claiming the same From domain
// is counted by neither.
func TestPostfixLimitsPerVerifiedDomain(t *testing.T) {
	testenv.Require(t)
	srv := dkimDNS(t)
	sl := sluicetest.StartSluice(t, dkimConfig(srv)+`
[[limit]]
name = "per-signer"
count = "messages"
per = "dkim_domain"
rate = "2/1d"
action = "reject"

[[limit]]
name = "per-author"
count = "messages"
per = "from_domain"
match.dmarc = "pass"
rate = "1/1d"
action = "tempfail"
`)
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen})
	send := func(msg []byte) mta.Transaction {
		c := session(t, pf.Addr, spfClient)
		defer c.Quit()
		tr, err := c.Send("b@bounces.example", []string{rcpt}, msg)
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	// ed.example signs for none.example (p=none: DMARC fails, unaligned).
	for i := range 2 {
		if tr := send(signedBy(dkimEd, "a@none.example", fmt.Sprintf("signed %d", i), true)); !tr.Accepted() {
			t.Fatalf("message %d signed by ed.example: %v", i, tr)
		}
	}
	if stage, r := send(signedBy(dkimEd, "a@none.example", "signed 3", true)).Refused(); stage != "DATA" || r.Code != 550 || !strings.Contains(r.Text, "dkim_domain:ed.example") {
		t.Errorf("third message signed by ed.example: %s %v; want 550 naming dkim_domain:ed.example", stage, r)
	}
	// rsa.example: DMARC pass by its aligned signature, once; then the
	// per-author limit answers.
	if tr := send(signedBy(dkimRSA, "a@rsa.example", "author 1", true)); !tr.Accepted() {
		t.Fatalf("first DMARC pass: %v", tr)
	}
	if stage, r := send(signedBy(dkimRSA, "a@rsa.example", "author 2", true)).Refused(); stage != "DATA" || r.Code != 451 || !strings.Contains(r.Text, "from_domain:rsa.example") {
		t.Errorf("second DMARC pass from rsa.example: %s %v; want 451 naming from_domain:rsa.example", stage, r)
	}
	// Unsigned, From none.example: neither limit counts it.
	for i := range 3 {
		if tr := send(dkimtest.Message("a@none.example", rcpt, fmt.Sprintf("unsigned %d", i), 200)); !tr.Accepted() {
			t.Errorf("unsigned %d: %v", i, tr)
		}
	}
}
