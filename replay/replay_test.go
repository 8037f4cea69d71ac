package replay

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"sluice/config"
)

const clockConfig = `listen = "inet:127.0.0.1:8890"
mode = "enforce"
trusted = []

[[limit]]
name = "msgs-per-sender"
count = "messages"
per = "sender"
rate = "1/1h"
action = "hold"
`

// oneMessage is a one-message Postfix session of sender at the stamp.
func oneMessage(stamp string, pid int, sender string) string {
	return fmt.Sprintf(`%[1]s mx postfix/smtpd[%[2]d]: connect from c[192.0.2.1]
%[1]s mx postfix/smtpd[%[2]d]: A%[2]dBCD: client=c[192.0.2.1]
%[1]s mx postfix/qmgr[9]: A%[2]dBCD: from=<%[3]s>, size=100, nrcpt=1 (queue active)
%[1]s mx postfix/smtp[8]: A%[2]dBCD: to=<r@x>, relay=r[192.0.2.9]:25, delay=1, dsn=2.0.0, status=sent (ok)
%[1]s mx postfix/smtpd[%[2]d]: disconnect from c[192.0.2.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5
`, stamp, pid, sender)
}

// The counters run on the log's clock, never the wall clock: two
// messages of a sender two hours apart in a log from 2001 stay within
// 1/1h, two a minute apart cross it — though both pairs are replayed
// within the same millisecond. The config's enforce mode is replayed in
// dry-run: the crossing is a "would hold".
func TestReplayRunsOnTheLogsClock(t *testing.T) {
	c, err := config.Parse("clock.toml", []byte(clockConfig))
	if err != nil {
		t.Fatal(err)
	}
	log := oneMessage("2001-09-09T01:00:00Z", 1, "slow@x") + oneMessage("2001-09-09T01:30:00Z", 2, "fast@x") +
		oneMessage("2001-09-09T01:31:00Z", 3, "fast@x") + oneMessage("2001-09-09T03:00:00Z", 4, "slow@x")
	rep := run(t, c, []byte(log))
	if len(rep.Rules) != 1 {
		t.Fatalf("rules: %+v", rep.Rules)
	}
	r := rep.Rules[0]
	if r.Would.Hold != 1 || r.Crossed != 1 || len(r.Top) != 1 || r.Top[0].Key != "sender:fast@x" {
		t.Errorf("got %+v", r)
	}
	if got := r.Top[0].First.Format("15:04"); got != "01:31" {
		t.Errorf("first crossing at %s, want 01:31 of the log", got)
	}
	if rep.Mode != "enforce" || rep.Messages != 4 || rep.Sessions != 4 || len(r.Hourly) != 3 || r.Hourly[0].Count != 1 {
		t.Errorf("report %+v", rep)
	}
	if r.Events != 4 || r.Share != 0.25 {
		t.Errorf("events %d share %v", r.Events, r.Share)
	}
}

// The three forms of one report say the same.
func TestReportForms(t *testing.T) {
	c, err := config.Parse("clock.toml", []byte(clockConfig))
	if err != nil {
		t.Fatal(err)
	}
	rep := run(t, c, []byte(oneMessage("2001-09-09T01:30:00Z", 2, "fast@x")+oneMessage("2001-09-09T01:31:00Z", 3, "fast@x")))
	var text, js, html bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteHTML(&html); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"msgs-per-sender  messages  hold 1", "sender:fast@x"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, text.String())
		}
	}
	for _, want := range []string{`"hold": 1`, `"key": "sender:fast@x"`, `"lines": 10`, `"mta_refused": 0`} {
		if !strings.Contains(js.String(), want) {
			t.Errorf("JSON lacks %q:\n%s", want, js.String())
		}
	}
	h := html.String()
	if n := strings.Count(h, `<rect class="bar"`); n != 1 {
		t.Errorf("HTML has %d bars, want 1 (one hour)", n)
	}
	for _, bad := range []string{"<script", "<link", "http://", "https://", "@import", "url("} {
		if strings.Contains(h, bad) {
			t.Errorf("HTML holds %q: not self-contained", bad)
		}
	}
}
