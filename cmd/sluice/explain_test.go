package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	for _, want := range []string{
		`client 192.0.2.7 [unknown] on listener "smtpd", HELO "mail.example.org", not authenticated`,
		"\nconnect\n  conn-per-ip  applies  client_ip:192.0.2.7  concurrent 3 at once, tempfail\n  => continue\n",
		"jp          no       match.client: client 192.0.2.7 (unknown) is in none of jp",
		`submission  no       match.listener: listener "smtpd" is not one of ["submission"]`,
		"per-sender  applies  sender:alice@example.org",
		"trial       applies  client_ip:192.0.2.7       messages 1/1h, tempfail (mode dry-run)",
		"\nrcpt bob@gmail.com\n  gmail  applies  rcpt_domain:gmail.com  recipients 2/1m, tempfail\n",
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
		"jp          applies  client_ip:203.0.113.9  messages 20/1h, tempfail, final",
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
