package main

import (
	"compress/gzip"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const replayPolicy = `
listen = "inet:127.0.0.1:8890"
trusted = []

[[limit]]
name = "msgs-per-sender"
count = "messages"
per = "sender"
rate = "1/1h"
`

// Bad flags and logs are refused with a message that names them, before
// anything is read.
func TestReplayRefusesBadInput(t *testing.T) {
	cfg := writeConfig(t, replayPolicy)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"replay", "-config", cfg}, 2, "no log given"},
		{[]string{"replay", "-config", cfg, "-store", "redis", "x.log"}, 2, "Redis counts on its own TIME"},
		{[]string{"replay", "-config", cfg, "-format", "csv", "x.log"}, 2, `unknown log format "csv"`},
		{[]string{"replay", "-config", cfg, "-since", "yesterday", "x.log"}, 2, `-since: "yesterday" is not a time`},
		{[]string{"replay", "-config", cfg, "-since", "2026-12-02", "-until", "2026-12-01", "x.log"}, 2, "-until must be after -since"},
		{[]string{"replay", "-config", cfg, "-listener", "smtpd", "x.log"}, 2, "want SERVICE=LISTENER"},
		{[]string{"replay", "-config", cfg, filepath.Join(t.TempDir(), "missing.log")}, 1, "missing.log: no such file"},
		{[]string{"replay", "-config", cfg, t.TempDir()}, 1, "is a directory"},
	} {
		code, _, stderr := runCmd(tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, %q; want %d and %q", tc.args[3:], code, stderr, tc.code, tc.want)
		}
	}
}

// A gzip log, with a garbled line shown as file:line, cut by -since and
// -until, replays into a JSON report.
func TestReplayCommand(t *testing.T) {
	cfg := writeConfig(t, replayPolicy)
	var log strings.Builder
	for i, stamp := range []string{"2026-12-01T09:00:00Z", "2026-12-01T10:00:00Z", "2026-12-01T10:10:00Z", "2026-12-01T12:00:00Z"} {
		pid := 100 + i
		for _, l := range []string{
			"%[1]s mx postfix/smtpd[%[2]d]: connect from c[192.0.2.1]",
			"%[1]s mx postfix/smtpd[%[2]d]: ABCDE%[2]d: client=c[192.0.2.1]",
			"%[1]s mx postfix/qmgr[9]: ABCDE%[2]d: from=<s@x>, size=100, nrcpt=1 (queue active)",
			"%[1]s mx postfix/smtp[8]: ABCDE%[2]d: to=<r@x>, relay=r[192.0.2.9]:25, delay=1, dsn=2.0.0, status=sent (ok)",
			"%[1]s mx postfix/smtpd[%[2]d]: disconnect from c[192.0.2.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5",
		} {
			fmt.Fprintf(&log, l+"\n", stamp, pid)
		}
		if i == 1 {
			log.WriteString("\x01\x02 not a log line\n")
		}
	}
	path := filepath.Join(t.TempDir(), "mail.log.1.gz")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	zw := gzip.NewWriter(f)
	zw.Write([]byte(log.String()))
	zw.Close()
	f.Close()
	code, stdout, stderr := runCmd("replay", "-config", cfg, "-json", "-since", "2026-12-01T09:30:00Z", "-until", "2026-12-01T11:00:00Z", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, "mail.log.1.gz:11: skipped") {
		t.Errorf("stderr %q does not name the garbled line", stderr)
	}
	var rep struct {
		Lines, Skipped, Sessions, Messages int
		Rules                              []struct {
			Rule  string
			Would map[string]int
		}
	}
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Lines != 21 || rep.Skipped != 1 || rep.Sessions != 2 || rep.Messages != 2 || rep.Rules[0].Would["tempfail"] != 1 {
		t.Errorf("report %+v", rep)
	}
}

// "-" reads the log from stdin, and -listener names a Postfix service's
// milter listener as the config's rules know it.
func TestReplayStdinAndListener(t *testing.T) {
	cfg := writeConfig(t, `
listen = "inet:127.0.0.1:8890"
trusted = []

[[limit]]
name = "mx-conns"
count = "connections"
per = "client_ip"
rate = "1/1h"
match.listener = ["mx.example.org"]
`)
	log := "2026-12-01T09:00:00Z mx postfix/smtpd[1]: connect from c[192.0.2.1]\n" +
		"2026-12-01T09:00:01Z mx postfix/smtpd[1]: disconnect from c[192.0.2.1] ehlo=1 quit=1 commands=2\n" +
		"2026-12-01T09:00:02Z mx postfix/smtpd[1]: connect from c[192.0.2.1]\n" +
		"2026-12-01T09:00:03Z mx postfix/smtpd[1]: disconnect from c[192.0.2.1] ehlo=1 quit=1 commands=2\n"
	f, err := os.CreateTemp(t.TempDir(), "stdin")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(log)
	f.Seek(0, 0)
	stdin := os.Stdin
	os.Stdin = f
	defer func() { os.Stdin = stdin }()
	for _, tc := range []struct {
		flags []string
		want  string
	}{
		{nil, "mx-conns  connections  -"},
		{[]string{"-listener", "smtpd=mx.example.org"}, "mx-conns  connections  tempfail 1"},
	} {
		f.Seek(0, 0)
		args := append(append([]string{"replay", "-config", cfg}, tc.flags...), "-")
		code, stdout, stderr := runCmd(args...)
		if code != 0 || !strings.Contains(stdout, tc.want) {
			t.Errorf("%v: exit %d, want %q in\n%s%s", tc.flags, code, tc.want, stdout, stderr)
		}
	}
}
