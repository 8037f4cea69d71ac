package engine_test

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/authres"

	"sluice/auth/dkim/dkimtest"
	"sluice/config"
	"sluice/engine"
	"sluice/limits/memstore"
	"sluice/smtp"
	"sluice/test/dnstest"
)

const maID = "mx.sluice.test"

// The zone of these tests: bank.example publishes SPF for 198.51.100.0/24,
// a DKIM key and p=reject.
var bankKey = dkimtest.Ed25519("bank.example", "s1")

func bankZone(t *testing.T) *dnstest.Server {
	return dnstest.Start(t, dnstest.NewZone().MustAddText(
		`bank.example. 300 IN TXT "v=spf1 ip4:198.51.100.0/24 -all"`,
		`_dmarc.bank.example. 300 IN TXT "v=DMARC1; p=reject"`,
		`other.example. 300 IN TXT "v=spf1 ip4:198.51.100.0/24 -all"`,
		bankKey.ZoneLine(),
	))
}

// maEngine builds the engine a config file with SPF, DKIM and DMARC on
// makes, asking srv; more holds more keys of [dmarc].
func maEngine(t *testing.T, srv *dnstest.Server, dmarcKeys string) *engine.Engine {
	t.Helper()
	c, err := config.Parse("test.toml", fmt.Appendf(nil, `authserv_id = %q
trusted = []

[dns]
servers = [%q]
timeout = "1s"

[spf]
enabled = true

[dkim]
enabled = true

[dmarc]
enabled = true
%s
`, maID, srv.Addr(), dmarcKeys))
	if err != nil {
		t.Fatal(err)
	}
	store, err := memstore.New(memstore.Config{MaxKeys: 1000}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	b, err := c.Build(config.Runtime{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	return b.Engine
}

// deliver runs one message from ip through the engine as the milter
// would, the body in chunks, and returns the end-of-message decision and
// edits.
func deliver(t *testing.T, eng *engine.Engine, ip, helo, sender string, msg []byte) (smtp.Decision, []smtp.Edit) {
	t.Helper()
	ctx := context.Background()
	s := eng.Open(smtp.Client{IP: netip.MustParseAddr(ip), Name: "unknown", Listener: "smtpd"})
	defer s.Close(ctx)
	s.Stage(ctx, smtp.Connect)
	s.Helo(helo)
	s.Stage(ctx, smtp.Helo)
	s.Mail(sender, "")
	if d := s.Stage(ctx, smtp.Mail); d.Refused() {
		t.Fatalf("MAIL FROM refused: %+v", d)
	}
	s.Rcpt("rcpt@example.net")
	s.Stage(ctx, smtp.Rcpt)
	fields, body := dkimtest.Split(msg)
	for _, f := range fields {
		s.Header(f.Name, f.Value)
	}
	for len(body) > 0 {
		n := min(len(body), 1000)
		s.Body(body[:n])
		body = body[n:]
	}
	d := s.Stage(ctx, smtp.Data)
	var edits []smtp.Edit
	if !d.Refused() {
		edits = s.Edits()
	}
	s.EndMessage(ctx, !d.Refused())
	return d, edits
}

// ours returns the one Authentication-Results the edits insert, parsed;
// it fails the test when there is not exactly one.
func ours(t *testing.T, edits []smtp.Edit) (string, map[string][]authres.Result) {
	t.Helper()
	var found []string
	for _, e := range edits {
		if e.Kind == smtp.Insert && strings.EqualFold(e.Name, "Authentication-Results") {
			found = append(found, e.Value)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d Authentication-Results inserted (%q), want 1", len(found), found)
	}
	id, rs, err := authres.Parse(found[0])
	if err != nil || id != maID {
		t.Fatalf("%q: authserv-id %q, %v", found[0], id, err)
	}
	by := map[string][]authres.Result{}
	for _, r := range rs {
		m := "?"
		switch r.(type) {
		case *authres.SPFResult:
			m = "spf"
		case *authres.DKIMResult:
			m = "dkim"
		case *authres.DMARCResult:
			m = "dmarc"
		}
		by[m] = append(by[m], r)
	}
	return found[0], by
}

// One Authentication-Results per message carries spf=, a dkim= per
// signature with header.d/i/s/a/b, and dmarc= with header.from and
// policy.dmarc; it parses back with go-msgauth's authres.Parse.
func TestOneAuthenticationResults(t *testing.T) {
	srv := bankZone(t)
	eng := maEngine(t, srv, "")
	other := dkimtest.Ed25519("other.example", "nokey") // no key published: permerror
	msg := dkimtest.Sign(dkimtest.Message("ceo@bank.example", "rcpt@example.net", "two signatures", 2000), bankKey, dkimtest.Options{Relaxed: true})
	msg = dkimtest.Sign(msg, other, dkimtest.Options{})
	d, edits := deliver(t, eng, "198.51.100.7", "mail.bank.example", "bounce@bank.example", msg)
	if d.Refused() {
		t.Fatalf("%+v", d)
	}
	raw, by := ours(t, edits)
	t.Log(raw)
	if s := by["spf"]; len(s) != 1 || s[0].(*authres.SPFResult).Value != "pass" {
		t.Errorf("spf: %+v", s)
	}
	dk := by["dkim"]
	if len(dk) != 2 {
		t.Fatalf("dkim: %+v", dk)
	}
	// The top signature is other.example's (signed last).
	if r := dk[0].(*authres.DKIMResult); r.Value != "permerror" || r.Domain != "other.example" {
		t.Errorf("first dkim: %+v", r)
	}
	if r := dk[1].(*authres.DKIMResult); r.Value != "pass" || r.Domain != "bank.example" || r.Identifier != "@bank.example" {
		t.Errorf("second dkim: %+v", r)
	}
	for _, want := range []string{"header.s=s1", "header.a=ed25519-sha256", "header.b=", "policy.dmarc=none", "header.from=bank.example"} {
		if !strings.Contains(raw, want) {
			t.Errorf("no %s in %q", want, raw)
		}
	}
	if dm := by["dmarc"]; len(dm) != 1 || dm[0].(*authres.DMARCResult).Value != "pass" || dm[0].(*authres.DMARCResult).From != "bank.example" {
		t.Errorf("dmarc: %+v", dm)
	}
	var names []string
	for _, c := range d.Checks {
		names = append(names, c.Name+"="+c.Result)
	}
	if strings.Join(names, " ") != "dkim=pass dmarc=pass" {
		t.Errorf("end-of-message checks %q", names)
	}
}

// Two From fields (CVE-2019-16378: opendmarc evaluated the first, which a
// forger picks) are permerror, and refused where permerror is mapped to
// reject; the signed From of the bank does not save the message.
func TestDMARCTwoFromFields(t *testing.T) {
	srv := bankZone(t)
	eng := maEngine(t, srv, `permerror = "reject"`)
	signed := dkimtest.Sign(dkimtest.Message("ceo@bank.example", "rcpt@example.net", "two from", 500), bankKey, dkimtest.Options{})
	msg := append([]byte("From: Bank <ceo@bank.example>\r\n"), signed...)
	d, _ := deliver(t, eng, "198.51.100.7", "mail.bank.example", "bounce@bank.example", msg)
	if !d.Refused() || !strings.HasPrefix(d.Reply, "550 5.7.1") || d.Checks[len(d.Checks)-1].Result != "permerror" {
		t.Fatalf("two From fields: %+v, want 550 and dmarc permerror", d)
	}
	// The same in tag mode: delivered, and the header says permerror.
	eng = maEngine(t, srv, "")
	d, edits := deliver(t, eng, "198.51.100.7", "mail.bank.example", "bounce@bank.example", msg)
	_, by := ours(t, edits)
	if d.Refused() || by["dmarc"][0].(*authres.DMARCResult).Value != "permerror" {
		t.Errorf("tagged: %+v %+v", d, by["dmarc"])
	}
}

// An Authentication-Results with our authserv-id that the client wrote
// (CVE-2020-12272: opendmarc read such a field's SPF result) is removed,
// however its authserv-id is written, and our own says what DNS says:
// the forged dmarc=pass changes nothing.
func TestDMARCInjectedAuthenticationResults(t *testing.T) {
	srv := bankZone(t)
	eng := maEngine(t, srv, `reject = "reject"`)
	msg := []byte("Authentication-Results: " + maID + "; spf=pass smtp.mailfrom=bank.example; dkim=pass header.d=bank.example; dmarc=pass header.from=bank.example\r\n" +
		"Authentication-Results: (comment) MX.SLUICE.TEST;\r\n dmarc=pass header.from=bank.example\r\n" +
		"Authentication-Results: \"mx.sluice.test\"; spf=pass smtp.mailfrom=bank.example\r\n" +
		"Authentication-Results: other.example; spf=pass\r\n")
	msg = append(msg, dkimtest.Message("ceo@bank.example", "rcpt@example.net", "injected", 500)...)
	// From outside bank.example's SPF and unsigned: DMARC fails, p=reject.
	d, _ := deliver(t, eng, "203.0.113.5", "evil.example", "x@evil.example", msg)
	if !d.Refused() || !strings.Contains(d.Reply, "bank.example") {
		t.Fatalf("%+v, want the DMARC reject naming bank.example", d)
	}
	eng = maEngine(t, srv, "")
	d, edits := deliver(t, eng, "203.0.113.5", "evil.example", "x@evil.example", msg)
	removed := 0
	for _, e := range edits {
		if e.Kind == smtp.Remove && strings.EqualFold(e.Name, "Authentication-Results") {
			removed++
			if e.Index == 4 {
				t.Errorf("removed the other host's field")
			}
		}
	}
	_, by := ours(t, edits)
	if removed != 3 || d.Refused() || by["dmarc"][0].(*authres.DMARCResult).Value != "fail" {
		t.Errorf("removed %d forged fields (want 3), dmarc %+v", removed, by["dmarc"])
	}
}

// The SPF result of the HELO identity — what SPF checks for the null
// sender — never counts for DMARC (CVE-2019-20790): a bounce from a
// client bank.example's SPF allows, HELO bank.example, From bank.example,
// unsigned, fails DMARC though SPF passes.
func TestDMARCIgnoresHeloIdentity(t *testing.T) {
	srv := bankZone(t)
	eng := maEngine(t, srv, `reject = "reject"`)
	msg := dkimtest.Message("ceo@bank.example", "rcpt@example.net", "helo identity", 500)
	d, _ := deliver(t, eng, "198.51.100.7", "bank.example", "", msg)
	if !d.Refused() {
		t.Fatalf("%+v: a HELO-identity SPF pass made DMARC pass", d)
	}
	// The same with MAIL FROM in bank.example passes: SPF's mailfrom
	// identity is the one DMARC aligns.
	if d, _ := deliver(t, eng, "198.51.100.7", "bank.example", "bounce@bank.example", msg); d.Refused() {
		t.Fatalf("mailfrom identity: %+v", d)
	}
}

// A body that changed after signing fails DKIM; with SPF unaligned, DMARC
// fails and p=reject refuses with the configured template, naming the
// From domain.
func TestDMARCRejectTemplate(t *testing.T) {
	srv := bankZone(t)
	eng := maEngine(t, srv, "reject = \"reject\"\n[dmarc.reply]\nreject = \"550 5.7.1 Refused by the DMARC policy of {from_domain}\"")
	msg := dkimtest.Sign(dkimtest.Message("ceo@bank.example", "rcpt@example.net", "changed", 500), bankKey, dkimtest.Options{})
	msg = bytes.Replace(msg, []byte("lazy dog"), []byte("lazy cat"), 1)
	d, _ := deliver(t, eng, "198.51.100.7", "mail.other.example", "x@other.example", msg)
	if d.Reply != "550 5.7.1 Refused by the DMARC policy of bank.example" {
		t.Errorf("reply %q", d.Reply)
	}
}

// A signature with simple header canonicalisation over fields written
// with no space after the colon and with two verifies when the front end
// gives the values as written (ExactHeader), and DMARC still reads the
// From domain from them; given as MTAs do by default, one space dropped
// (Header), sluice can only guess, and the guess fails on such fields.
func TestExactHeaderValues(t *testing.T) {
	srv := bankZone(t)
	eng := maEngine(t, srv, "")
	msg := dkimtest.Message("ceo@bank.example", "rcpt@example.net", "spaced", 1000)
	msg = bytes.Replace(msg, []byte("Subject: spaced"), []byte("Subject:  two  spaces\r\nKeywords:tight"), 1)
	msg = dkimtest.Sign(msg, bankKey, dkimtest.Options{Headers: []string{"From", "Subject", "Keywords", "Date"}})
	head, body, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
	run := func(exact bool) map[string][]authres.Result {
		ctx := context.Background()
		s := eng.Open(smtp.Client{IP: netip.MustParseAddr("198.51.100.7"), Name: "unknown", Listener: "smtpd"})
		defer s.Close(ctx)
		s.Stage(ctx, smtp.Connect)
		s.Mail("bounce@bank.example", "")
		s.Stage(ctx, smtp.Mail)
		s.Rcpt("rcpt@example.net")
		s.Stage(ctx, smtp.Rcpt)
		var fields [][2]string
		for _, line := range strings.Split(string(head), "\r\n") {
			if line[0] == ' ' || line[0] == '\t' {
				fields[len(fields)-1][1] += "\r\n" + line
				continue
			}
			name, value, _ := strings.Cut(line, ":")
			fields = append(fields, [2]string{name, value})
		}
		for _, f := range fields {
			if exact {
				s.(smtp.ExactHeaderSession).ExactHeader(f[0], f[1])
			} else {
				s.Header(f[0], strings.TrimPrefix(f[1], " "))
			}
		}
		s.Body(body)
		d := s.Stage(ctx, smtp.Data)
		if d.Refused() {
			t.Fatalf("exact=%v: %+v", exact, d)
		}
		_, by := ours(t, s.Edits())
		s.EndMessage(ctx, true)
		return by
	}
	by := run(true)
	if dk := by["dkim"]; len(dk) != 1 || dk[0].(*authres.DKIMResult).Value != "pass" {
		t.Errorf("values as written: dkim %+v, want pass", *dk[0].(*authres.DKIMResult))
	}
	if dm := by["dmarc"]; len(dm) != 1 || dm[0].(*authres.DMARCResult).From != "bank.example" {
		t.Errorf("values as written: dmarc %+v, want header.from=bank.example", dm)
	}
	if dk := run(false)["dkim"]; len(dk) != 1 || dk[0].(*authres.DKIMResult).Value != "fail" {
		t.Errorf("one space dropped: dkim %+v, want fail", dk)
	}
}
