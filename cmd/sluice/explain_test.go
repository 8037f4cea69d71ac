package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sluice/auth/dkim/dkimtest"
	"sluice/test/dnstest"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sluice.toml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func runCmd(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

const explainPolicy = `
listen = "inet:127.0.0.1:8890"
trusted = ["127.0.0.0/8"]

[store]
snapshot = "%SNAP%"

[lists]
jp = "file:%JP%"

[[limit]]
name = "conn-per-ip"
count = "concurrent"
per = "client_ip"
max = 3

[[limit]]
name = "jp"
count = "messages"
per = "client_ip"
rate = "20/1h"
final = true
match.client = ["jp"]

[[limit]]
name = "submission"
count = "messages"
per = "sasl_user"
rate = "50/1h"
match.listener = ["submission"]
match.authenticated = true

[[limit]]
name = "per-sender"
count = "messages"
per = "sender"
rate = "4/1h"
reply = "451 4.7.1 Too many messages from {sender}; try again in {retry_after}"

[[limit]]
name = "gmail"
count = "recipients"
per = "rcpt_domain"
rate = "2/1m"
match.rcpt_domain = ["gmail.com"]

[[limit]]
name = "trial"
count = "messages"
per = "client_ip"
rate = "1/1h"
mode = "dry-run"
`

func explainSetup(t *testing.T) (config, snap string) {
	t.Helper()
	dir := t.TempDir()
	jp := filepath.Join(dir, "jp.cidr")
	if err := os.WriteFile(jp, []byte("# Japan\n203.0.113.0/24\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	snap = filepath.Join(dir, "counters.snap")
	text := strings.NewReplacer("%SNAP%", snap, "%JP%", jp).Replace(explainPolicy)
	return writeConfig(t, text), snap
}

func TestExplain(t *testing.T) {
	config, snap := explainSetup(t)
	code, out, errs := runCmd("explain", "-config", config, "-client", "192.0.2.7", "-helo", "mail.example.org",
		"-sender", "alice@example.org", "-rcpt", "bob@gmail.com", "-rcpt", "carol@example.net")
	t.Logf("\n%s", out)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	host, _ := os.Hostname()
	for _, want := range []string{
		// The listener is Postfix's default {daemon_name}: this host's name.
		`client 192.0.2.7 [unknown] on listener "` + host + `", HELO "mail.example.org", not authenticated`,
		"\nconnect\n  conn-per-ip  applies  client_ip:192.0.2.7  concurrent 3 at once, tempfail\n  => continue\n",
		"jp          no       match.client: client 192.0.2.7 (unknown) is in none of jp",
		`submission  no       match.listener: listener "` + host + `" is not one of ["submission"]`,
		"per-sender  applies  sender:alice@example.org",
		"trial       applies  client_ip:192.0.2.7       messages 1/1h (burst 1), tempfail (mode dry-run)",
		"\nrcpt bob@gmail.com\n  gmail  applies  rcpt_domain:gmail.com  recipients 2/1m (burst 2), tempfail\n",
		"\nrcpt carol@example.net\n  gmail  no  match.rcpt_domain: recipient domain \"example.net\" is in none of rcpt_domain (inline)\n",
		"from session 2, mail: continue, would tempfail (trial, dry-run)",
		`from session 3, rcpt bob@gmail.com: tempfail "451 4.7.1 Rate limit gmail exceeded for rcpt_domain:gmail.com; try again in 30s", by gmail`,
		`from session 5, mail: tempfail "451 4.7.1 Too many messages from alice@example.org; try again in 15m", by per-sender`,
		`session 4, connect: tempfail "421 4.7.0 Rate limit conn-per-ip exceeded for client_ip:192.0.2.7", by conn-per-ip`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if _, err := os.Stat(snap); !os.IsNotExist(err) {
		t.Errorf("explain touched the store's snapshot %s: %v", snap, err)
	}
}

func TestExplainProfiles(t *testing.T) {
	config, _ := explainSetup(t)
	// The Japanese class is final: the later rules are not evaluated.
	_, out, _ := runCmd("explain", "-config", config, "-client", "203.0.113.9", "-sender", "a@example.jp")
	for _, want := range []string{
		"jp          applies  client_ip:203.0.113.9  messages 20/1h (burst 20), tempfail, final",
		"per-sender  no       not evaluated: jp, before it, is final",
		"(no -rcpt given",
		"from session 21, mail: tempfail",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("jp client: output lacks %q\n%s", want, out)
		}
	}
	// Submission, authenticated.
	_, out, _ = runCmd("explain", "-config", config, "-client", "192.0.2.7", "-listener", "submission", "-auth", "bob", "-sender", "a@example.org")
	if !strings.Contains(out, `authenticated as "bob"`) || !strings.Contains(out, "submission  applies  sasl_user:bob") {
		t.Errorf("submission:\n%s", out)
	}
	// A trusted client: nothing applies.
	_, out, _ = runCmd("explain", "-config", config, "-client", "127.0.0.1", "-sender", "a@example.org")
	if !strings.Contains(out, "on the trusted list") || strings.Contains(out, "applies") || !strings.Contains(out, "the client 127.0.0.1 is trusted") {
		t.Errorf("trusted client:\n%s", out)
	}
	// The null sender is not counted per sender.
	_, out, _ = runCmd("explain", "-config", config, "-client", "192.0.2.7", "-sender", "<>")
	if !strings.Contains(out, "sender <>") || !strings.Contains(out, `per-sender  no       counts nothing: the null sender is not counted per sender`) {
		t.Errorf("null sender:\n%s", out)
	}
}

func TestExplainErrors(t *testing.T) {
	config, _ := explainSetup(t)
	if code, _, errs := runCmd("explain", "-config", config, "-client", "not-an-ip"); code != 2 || !strings.Contains(errs, "-client") {
		t.Errorf("bad -client: exit %d %q", code, errs)
	}
	missing := filepath.Join(t.TempDir(), "gone.cidr")
	bad := writeConfig(t, "[lists]\njp = \"file:"+missing+"\"\n")
	for _, cmd := range []string{"explain", "check"} {
		code, _, errs := runCmd(cmd, "-config", bad, "-client", "192.0.2.7")
		if cmd == "check" {
			code, _, errs = runCmd(cmd, "-config", bad)
		}
		if code != 1 || !strings.Contains(errs, missing) || !strings.Contains(errs, bad+":2:") {
			t.Errorf("%s with a missing list file: exit %d, %q; want 1 naming %s and the config line", cmd, code, errs, missing)
		}
	}
}

// A rule's delay above max_delay is a config error with its line.
func TestDelayAboveMaxDelay(t *testing.T) {
	path := writeConfig(t, `max_delay = "5s"

[[limit]]
name = "slow"
count = "messages"
per = "client_ip"
rate = "1/1m"
action = "delay"
delay = "6s"
`)
	code, _, errs := runCmd("check", "-config", path)
	if code != 1 || !strings.Contains(errs, path+":9: limit[1].delay: 6s is above max_delay (5s)") {
		t.Errorf("exit %d: %q", code, errs)
	}
	path = writeConfig(t, "max_delay = \"28s\"\n")
	code, _, errs = runCmd("check", "-config", path)
	if code != 1 || !strings.Contains(errs, "max_delay") || !strings.Contains(errs, "milter_timeout") {
		t.Errorf("max_delay past the milter timeout: exit %d: %q", code, errs)
	}
	path = writeConfig(t, "milter_timeout = \"10s\"\nmax_delay = \"5s\"\n")
	if code, _, errs = runCmd("check", "-config", path); code != 0 {
		t.Errorf("Sendmail's 10s timeout with a 5s cap: exit %d: %q", code, errs)
	}
}

// explainChecks is a policy with SPF and a DNSBL, asking srv, and a tag
// rule so that the message gets headers of both kinds.
func explainChecks(t *testing.T, srv string) string {
	t.Helper()
	return writeConfig(t, `authserv_id = "mx.sluice.test"
trusted = []

[dns]
servers = ["`+srv+`"]

[spf]
enabled = true
fail = "reject"
mode = "tag"

[[checks.dnsbl]]
zone = "zen.example"
action = "reject"
mode = "dry-run"

[[limit]]
name = "per-sender"
count = "messages"
per = "sender"
rate = "1/1h"
action = "tag"
`)
}

// explain asks the sender checks through [dns] and shows, per stage, their
// results and the decision, and at the end the header fields the message
// would get; -no-dns leaves the checks out and says so.
func TestExplainSenderChecks(t *testing.T) {
	srv := dnstest.Start(t, dnstest.NewZone().MustAddText(
		`spf-fail.example. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"`,
		`9.100.51.198.zen.example. 300 IN A 127.0.0.2`,
	))
	config := explainChecks(t, srv.Addr())
	args := []string{"explain", "-config", config, "-client", "198.51.100.9", "-helo", "client.example.net",
		"-sender", "alice@spf-fail.example", "-rcpt", "bob@example.net"}
	code, out, errs := runCmd(args...)
	t.Logf("\n%s", out)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{
		"checks: client_access at connect; the others at MAIL FROM, asking DNS through [dns]",
		"check dnsbl:zen.example  listed  asks reject (mode dry-run)",
		"check spf                fail    asks reject (mode tag)",
		"=> continue, tagged by spf, would reject (dnsbl:zen.example, dry-run)",
		"at end of message\n  insert at 0  Authentication-Results: mx.sluice.test; spf=fail smtp.mailfrom=alice@spf-fail.example\n  insert at 1  Received-SPF: fail",
		"add  X-Sluice-Check: spf=fail action=reject mode=tag (",
		"(the checks that ask DNS left out: they answer each session alike)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	code, out, _ = runCmd(append(args, "-no-dns")...)
	if code != 0 || !strings.Contains(out, "checks: those that ask DNS left out (-no-dns)") || strings.Contains(out, "check spf") || strings.Contains(out, "Authentication-Results") {
		t.Errorf("-no-dns: exit %d\n%s", code, out)
	}
}

// With -no-dns, explain still asks the access tables — the client table
// at connect, the HELO and sender tables at MAIL FROM — and the checks
// that read only what the client said.
func TestExplainStaticChecks(t *testing.T) {
	dir := t.TempDir()
	clients := filepath.Join(dir, "clients.cidr")
	helos := filepath.Join(dir, "helo_checks")
	senders := filepath.Join(dir, "senders")
	for name, text := range map[string]string{
		clients: "203.0.113.0/24  REJECT Known spam network\n198.51.100.0/24  DELAY 3s\n",
		helos:   "/jp-good\\.example$/  REJECT\n",
		senders: "partner.example  OK\nspoof.example  REJECT Spoofed sender\n",
	} {
		if err := os.WriteFile(name, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	config := writeConfig(t, `authserv_id = "mx.sluice.test"
trusted = []

[checks]
client_access = "cidr:`+clients+`"
helo_access = "regexp:`+helos+`"
sender_access = "`+senders+`"
require_fqdn_sender = "reject"

[[checks.dnsbl]]
zone = "zen.example"
action = "reject"
`)
	for _, tc := range []struct {
		client, helo, sender string
		want                 []string
	}{
		{"203.0.113.9", "mx.example.org", "a@example.org", []string{
			"checks: the access tables and the checks of what the client said; those that ask DNS left out (-no-dns)",
			"\nconnect\n  (no rule counts at this stage)\n  check client_access  reject  asks reject  203.0.113.9 matched 203.0.113.0/24 at " + clients + ":1\n" +
				`  => reject "550 5.7.1 Client host rejected: Known spam network", by client_access`,
		}},
		{"198.51.100.7", "mx.example.org", "a@partner.example", []string{
			"check client_access  delay  asks delay",
			"=> continue, after a pause of 3s",
			"check sender_access  ok     no action",
		}},
		{"192.0.2.7", "mail1.jp-good.example", "a@example.org", []string{
			"check helo_access          reject  asks reject",
			`=> reject "550 5.7.1 <mail1.jp-good.example>: Helo command rejected: Access denied", by helo_access`,
		}},
		{"192.0.2.7", "mx.example.org", "alice", []string{
			"check require_fqdn_sender  fail  asks reject",
		}},
	} {
		code, out, errs := runCmd("explain", "-no-dns", "-config", config, "-client", tc.client, "-helo", tc.helo, "-sender", tc.sender)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errs)
		}
		for _, want := range tc.want {
			if !strings.Contains(out, want) {
				t.Errorf("%s %s %s: output lacks %q\n%s", tc.client, tc.helo, tc.sender, want, out)
			}
		}
		if strings.Contains(out, "dnsbl") {
			t.Errorf("-no-dns asked the blocklist:\n%s", out)
		}
	}
}

// Sessions held open at once are explained on counters of their own: a
// connection rate that the repetitions used up does not answer for the
// concurrency limit.
func TestExplainConcurrencyWithConnectionRate(t *testing.T) {
	config := writeConfig(t, `trusted = []

[[limit]]
name = "connrate"
count = "connections"
per = "client_ip"
rate = "5/1h"

[[limit]]
name = "conc"
count = "concurrent"
per = "client_ip"
max = 3
`)
	code, out, errs := runCmd("explain", "-config", config, "-client", "192.0.2.7", "-sender", "a@example.org")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{
		`from session 6, connect: tempfail "421 4.7.0 Rate limit connrate exceeded for client_ip:192.0.2.7`,
		`session 4, connect: tempfail "421 4.7.0 Rate limit conc exceeded for client_ip:192.0.2.7", by conc`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q\n%s", want, out)
		}
	}
}

// -json prints the same session for a program: every stage with its rules,
// checks and decision, the edits, and the repetitions.
func TestExplainJSON(t *testing.T) {
	srv := dnstest.Start(t, dnstest.NewZone().MustAddText(`spf-fail.example. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"`))
	code, out, errs := runCmd("explain", "-json", "-config", explainChecks(t, srv.Addr()), "-client", "198.51.100.9",
		"-helo", "client.example.net", "-sender", "alice@spf-fail.example", "-rcpt", "bob@example.net")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var got explainJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	var labels []string
	for _, s := range got.Stages {
		labels = append(labels, s.Label+":"+s.Decision.Kind)
	}
	if strings.Join(labels, " ") != "connect:continue helo:continue mail:continue rcpt bob@example.net:continue data:continue" {
		t.Errorf("stages %q", labels)
	}
	if got.Checks != "on" || len(got.Stages[2].Checks) != 2 || got.Stages[2].Checks[1].Check != "spf" || got.Stages[2].Checks[1].Result != "fail" {
		t.Errorf("checks %q %+v", got.Checks, got.Stages[2].Checks)
	}
	if len(got.Stages[2].Rules) != 1 || got.Stages[2].Rules[0].Key != "sender:alice@spf-fail.example" {
		t.Errorf("mail rules %+v", got.Stages[2].Rules)
	}
	if len(got.Edits) != 3 || got.Edits[0].Kind != "insert" || got.Edits[0].Name != "Authentication-Results" {
		t.Errorf("edits %+v", got.Edits)
	}
	if len(got.Repeat) == 0 || got.Repeat[0].Session != 2 || got.Repeat[0].Label != "mail" || got.Repeat[0].Decision.Outcomes[0].Action != "tag" {
		t.Errorf("repeat %+v", got.Repeat)
	}
}

// explain -message verifies a message file as the daemon would: DKIM,
// SPF and DMARC at their stages, and the one Authentication-Results it
// would write, for a signed message whose From the signature aligns with,
// and the same message with its body changed (written with bare LF line
// ends, as a file saved by hand is).
func TestExplainMessage(t *testing.T) {
	key := dkimtest.Ed25519("signed.example", "sel")
	srv := dnstest.Start(t, dnstest.NewZone().MustAddText(key.ZoneLine(),
		`signed.example. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"`,
		`_dmarc.signed.example. 300 IN TXT "v=DMARC1; p=reject"`))
	config := writeConfig(t, fmt.Sprintf(`authserv_id = "mx.sluice.test"
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
reject = "reject"
`, srv.Addr()))
	msg := dkimtest.Sign(dkimtest.Message("a@signed.example", "bob@example.net", "explain", 800), key, dkimtest.Options{Relaxed: true})
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good.eml"), filepath.Join(dir, "bad.eml")
	os.WriteFile(good, msg, 0o644)
	os.WriteFile(bad, bytes.ReplaceAll(bytes.Replace(msg, []byte("lazy dog"), []byte("lazy cat"), 1), []byte("\r\n"), []byte("\n")), 0o644)
	args := []string{"explain", "-config", config, "-client", "198.51.100.9", "-helo", "client.example.net",
		"-sender", "bounce@other.example", "-rcpt", "bob@example.net"}
	code, out, errs := runCmd(append(args, "-message", good)...)
	t.Logf("\n%s", out)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{
		"DKIM and DMARC: the message of -message verified at end of message",
		"check dkim   pass",
		"check dmarc  pass",
		"insert at 0  Authentication-Results: mx.sluice.test; spf=none smtp.mailfrom=bounce@other.example; dkim=pass header.a=ed25519-sha256",
		"header.d=signed.example header.i=@signed.example header.s=sel; dmarc=pass header.from=signed.example policy.dmarc=none",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	code, out, _ = runCmd(append(args, "-message", bad)...)
	if code != 0 || !strings.Contains(out, "check dkim   fail") || !strings.Contains(out, `reject "550 5.7.1 Rejected by the DMARC policy of signed.example"`) {
		t.Errorf("changed body: exit %d\n%s", code, out)
	}
	if code, _, errs := runCmd(append(args, "-message", filepath.Join(dir, "missing"))...); code != 2 || !strings.Contains(errs, "-message") {
		t.Errorf("missing file: exit %d %s", code, errs)
	}
}
