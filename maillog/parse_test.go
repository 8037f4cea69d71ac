package maillog

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"sluice/smtp"
)

var utc = time.UTC

func mustTime(s string) int64 {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t.UnixNano()
}

// Every timestamp form an admin's log has gives the same instant, host,
// program and pid.
func TestHeadForms(t *testing.T) {
	want := mustTime("2026-12-04T04:15:01.889064Z")
	sec := mustTime("2026-12-04T04:15:01Z")
	for _, tc := range []struct {
		line string
		at   int64
	}{
		{"Dec  4 04:15:01 mx postfix/submission/smtpd[123]: connect from a[192.0.2.1]", sec},
		{"Dec 04 04:15:01 mx postfix/submission/smtpd[123]: connect from a[192.0.2.1]", sec},
		{"Dec  4 04:15:01.889064 mx postfix/submission/smtpd[123]: connect from a[192.0.2.1]", want},
		{"2026-12-04T05:15:01.889064+01:00 mx postfix/submission/smtpd[123]: connect from a[192.0.2.1]", want},
		{"2026-12-04T05:15:01+0100 mx postfix/submission/smtpd[123]: connect from a[192.0.2.1]", sec},
		{"2026-12-04T04:15:01.889064Z mx postfix/submission/smtpd[123]: connect from a[192.0.2.1]", want},
		{`{"__REALTIME_TIMESTAMP":"1796357701889064","_HOSTNAME":"mx","SYSLOG_IDENTIFIER":"postfix/submission/smtpd","_PID":"123","MESSAGE":"connect from a[192.0.2.1]"}`, want},
		// journald keeps a message that is not UTF-8 as an array of bytes.
		{`{"__REALTIME_TIMESTAMP":"1796357701889064","_HOSTNAME":"mx","SYSLOG_IDENTIFIER":"postfix/submission/smtpd","SYSLOG_PID":"123","MESSAGE":[99,111,110,110,101,99,116,32,102,114,111,109,32,97,91,49,57,50,46,48,46,50,46,49,93]}`, want},
	} {
		p := newParser(Auto, utc, yearBefore(2026, time.Time{}))
		var e Event
		if err := p.parse([]byte(tc.line), &e); err != nil {
			t.Errorf("%s: %v", tc.line, err)
			continue
		}
		if e.Time != tc.at || e.Host != "mx" || e.PID != 123 || e.Listener != "submission" || e.Kind != Connect || e.ClientIP.String() != "192.0.2.1" {
			t.Errorf("%s: got %v %q pid %d listener %q %s %s", tc.line, time.Unix(0, e.Time).UTC(), e.Host, e.PID, e.Listener, e.Kind, e.ClientIP)
		}
	}
}

// Year-less stamps take the year from the file's time, step into the
// next year at the turn of the year, and back for a line of December
// logged after one of January (lines of one file keep their order).
func TestYearlessStamps(t *testing.T) {
	log := "Dec 31 23:59:59 mx postfix/smtpd[1]: connect from a[192.0.2.1]\n" +
		"Jan  1 00:00:01 mx postfix/smtpd[1]: connect from a[192.0.2.1]\n" +
		"Dec 31 23:59:59 mx postfix/smtpd[1]: connect from a[192.0.2.1]\n" +
		"Jan  2 00:00:01 mx postfix/smtpd[1]: connect from a[192.0.2.1]\n"
	// Written on January 3rd: the December lines are of the year before.
	mod := time.Date(2027, 1, 3, 0, 0, 0, 0, utc)
	r := &Reader{Location: utc}
	var got []string
	err := r.Read(context.Background(), []Source{{Name: "f", R: strings.NewReader(log), ModTime: mod}}, func(e *Event) {
		got = append(got, time.Unix(0, e.Time).UTC().Format(time.DateTime))
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "2026-12-31 23:59:59,2027-01-01 00:00:01,2026-12-31 23:59:59,2027-01-02 00:00:01"
	if strings.Join(got, ",") != want {
		t.Errorf("got %v\nwant %s", got, want)
	}
}

// Lines of several files come out merged in time order, gzip or not;
// garbled lines are counted and named with their file and line.
func TestReaderMergesAndSkips(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("2026-12-04T10:00:00Z mx postfix/smtpd[1]: connect from a[192.0.2.1]\n" +
		"2026-12-04T10:00:02Z mx postfix/smtpd[1]: connect from a[192.0.2.3]\n"))
	zw.Close()
	plain := "2026-12-04T10:00:01Z mx postfix/smtpd[2]: connect from b[192.0.2.2]\n" +
		"\x00garbage \xff line\n" +
		"2026-12-04T10:00:03Z mx postfix/smtpd[2]: connect from b[192.0.2.4]\n"
	var skipped []string
	var st Stats
	r := &Reader{Stats: &st, Skip: func(src string, line int64, text []byte, err error) {
		skipped = append(skipped, src+":"+string(rune('0'+line)))
	}}
	var ips []string
	err := r.Read(context.Background(), []Source{{Name: "new.log", R: strings.NewReader(plain)}, {Name: "old.log.gz", R: &gz}}, func(e *Event) {
		ips = append(ips, e.ClientIP.String())
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(ips, " ") != "192.0.2.1 192.0.2.2 192.0.2.3 192.0.2.4" {
		t.Errorf("order: %v", ips)
	}
	if st.Lines != 5 || st.Skipped != 1 || strings.Join(skipped, ",") != "new.log:2" {
		t.Errorf("lines %d skipped %d %v", st.Lines, st.Skipped, skipped)
	}
}

// What each Postfix line says.
func TestPostfixLines(t *testing.T) {
	for _, tc := range []struct {
		msg   string
		check func(e *Event) bool
	}{
		{"postfix/smtpd[9]: 4F1A2B3C: client=c.example[192.0.2.7], sasl_method=PLAIN, sasl_username=bob@example.org",
			func(e *Event) bool {
				return e.Kind == Client && e.QueueID == "4F1A2B3C" && e.SASLUser == "bob@example.org" && e.ClientName == "c.example"
			}},
		// Long queue ids, and a client without a name.
		{"postfix/smtpd[9]: 4Xyz1k2ABCzJ7s: client=unknown[2001:db8::5]",
			func(e *Event) bool {
				return e.Kind == Client && e.QueueID == "4Xyz1k2ABCzJ7s" && e.ClientIP.String() == "2001:db8::5" && e.ClientName == "unknown"
			}},
		{"postfix/smtpd[9]: NOQUEUE: reject: RCPT from c[192.0.2.7]: 450 4.7.1 <x@y>: Recipient address rejected: try later; from=<s@a.example> to=<x@y> proto=ESMTP helo=<h.example>",
			func(e *Event) bool {
				return e.Kind == Refused && e.QueueID == "" && e.Stage == smtp.Rcpt && e.By == ByMTA && e.Action == smtp.ActionTempfail &&
					e.Sender == "s@a.example" && len(e.Rcpts) == 1 && e.Rcpts[0] == "x@y" && e.Helo == "h.example"
			}},
		{"postfix/smtpd[9]: NOQUEUE: reject: MAIL from c[192.0.2.7]: 552 5.3.4 Message size exceeds fixed limit; proto=ESMTP helo=<h>",
			nil}, // malformed: no envelope; skipped
		{"postfix/cleanup[8]: 4F1A2B3C: milter-reject: END-OF-MESSAGE from c[192.0.2.7]: 5.7.1 Spam; from=<> to=<r@x> proto=ESMTP helo=<h>",
			func(e *Event) bool {
				return e.Kind == Refused && e.Stage == smtp.Data && e.By == ByMilter && e.Action == smtp.ActionReject && e.HasSender && e.Sender == ""
			}},
		{"postfix/cleanup[8]: 4F1A2B3C: milter-hold: END-OF-MESSAGE from c[192.0.2.7]: milter triggers HOLD action; from=<s@x> to=<r@x> proto=ESMTP helo=<h>",
			func(e *Event) bool { return e.Kind == Refused && e.Action == smtp.ActionHold && e.By == ByMilter }},
		{"postfix/cleanup[8]: 4F1A2B3C: reject: header Subject: buy now from c[192.0.2.7]; from=<s@x> to=<r@x> proto=ESMTP helo=<h>: 5.7.1 no thanks",
			func(e *Event) bool {
				return e.Kind == Refused && e.Stage == smtp.Data && e.By == ByMTA && e.Reply == "5.7.1 no thanks" && e.Sender == "s@x"
			}},
		{"postfix/qmgr[7]: 4F1A2B3C: from=<s@x>, size=1234, nrcpt=3 (queue active)",
			func(e *Event) bool { return e.Kind == Queued && e.Size == 1234 && e.Nrcpt == 3 && e.Sender == "s@x" }},
		{"postfix/qmgr[7]: 4F1A2B3C: from=<s@x>, status=expired, returned to sender",
			func(e *Event) bool { return e.Kind == Ignored }},
		{"postfix/local[6]: 4F1A2B3C: to=<root@mx>, orig_to=<postmaster@mx>, relay=local, delay=0, status=sent (delivered)",
			func(e *Event) bool { return e.Kind == Delivery && e.Rcpts[0] == "postmaster@mx" }},
		{"postfix/smtpd[9]: disconnect from c[192.0.2.7] ehlo=2 xclient=1 mail=3 rcpt=2/4 data=1 bdat=1 rset=1 quit=1 commands=10/12",
			func(e *Event) bool {
				return e.Kind == Disconnect && e.Helos == 2 && e.XClients == 1 && e.Mails == 3 && e.Datas == 2
			}},
		{"postfix/anvil[5]: statistics: max connection rate 1/60s", func(e *Event) bool { return e.Kind == Ignored }},
		{"cron[5]: (root) CMD (true)", func(e *Event) bool { return e.Kind == Ignored }},
	} {
		p := newParser(Auto, utc, yearBefore(2026, time.Time{}))
		var e Event
		err := p.parse([]byte("2026-12-04T10:00:00Z mx "+tc.msg), &e)
		if tc.check == nil {
			if !errors.Is(err, errMalformed) {
				t.Errorf("%s: %v, want malformed", tc.msg, err)
			}
			continue
		}
		if err != nil || !tc.check(&e) {
			t.Errorf("%s: %v %+v", tc.msg, err, e)
		}
	}
}

// What each Sendmail line says.
func TestSendmailLines(t *testing.T) {
	for _, tc := range []struct {
		msg   string
		check func(e *Event) bool
	}{
		{"sm-mta[15802]: 6B4IlCbI015802: from=<s@example.test>, size=157, class=0, nrcpts=2, msgid=<1.1@x>, proto=ESMTP, daemon=MTA, relay=mail.example [192.0.2.10] (may be forged)",
			func(e *Event) bool {
				return e.Kind == Queued && e.Sender == "s@example.test" && e.Size == 157 && e.Nrcpt == 2 && e.Listener == "MTA" &&
					e.ClientIP.String() == "192.0.2.10" && e.ClientName == "mail.example"
			}},
		{"sendmail[15808]: 6B4IlCbI015802: to=<b@example.org>,<a@example.org>, delay=00:00:00, xdelay=00:00:00, mailer=relay, pri=60157, relay=[127.0.0.1] [127.0.0.1], dsn=2.0.0, stat=Sent (Ok)",
			func(e *Event) bool {
				return e.Kind == Delivery && len(e.Rcpts) == 2 && e.Rcpts[0] == "b@example.org" && e.Rcpts[1] == "a@example.org"
			}},
		{"sendmail[15802]: 6B4IlCbI015802: <nosuchuser@smta.example.test>... User unknown",
			func(e *Event) bool {
				return e.Kind == Refused && e.Stage == smtp.Rcpt && e.By == ByMTA && e.Rcpts[0] == "nosuchuser@smta.example.test"
			}},
		{"sendmail[15802]: 6B4IlCbI015802: ruleset=check_rcpt, arg1=<x@y>, relay=[192.0.2.9], reject=550 5.7.1 <x@y>... Relaying denied",
			func(e *Event) bool {
				return e.Kind == Refused && e.Stage == smtp.Rcpt && e.Action == smtp.ActionReject && e.ClientIP.String() == "192.0.2.9"
			}},
		{"sendmail[15802]: 6B4IlCbI015802: Milter: from=<s@x>, reject=451 4.7.1 Try later",
			func(e *Event) bool {
				return e.Kind == Refused && e.Stage == smtp.Mail && e.By == ByMilter && e.Action == smtp.ActionTempfail
			}},
		{"sendmail[15802]: AUTH=server, relay=laptop [IPv6:2001:db8::1], authid=alice, mech=PLAIN, bits=0",
			func(e *Event) bool {
				return e.Kind == Auth && e.SASLUser == "alice" && e.ClientIP.String() == "2001:db8::1"
			}},
		{"sendmail[15819]: 6B4IlCkX015819: [127.0.0.20] did not issue MAIL/EXPN/VRFY/ETRN during connection to MSA",
			func(e *Event) bool { return e.Kind == NoMail && e.Listener == "MSA" && e.ClientName == "[127.0.0.20]" }},
		{"sm-msp-queue[3]: 6B4IlCkX015819: to=root, delay=00:00:00, stat=Sent", func(e *Event) bool { return e.Kind == Ignored }},
	} {
		p := newParser(Auto, utc, yearBefore(2026, time.Time{}))
		var e Event
		if err := p.parse([]byte("Dec  4 10:00:00 smta "+tc.msg), &e); err != nil || !tc.check(&e) {
			t.Errorf("%s: %v %+v", tc.msg, err, e)
		}
	}
}

// A gzip file cut short (rotated while it was written) or damaged gives
// the lines before the damage and one skipped line that says why; the
// other files go on.
func TestDamagedGzip(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	for i := 0; i < 200; i++ {
		fmt.Fprintf(zw, "2026-12-04T10:00:%02d.%06dZ mx postfix/smtpd[1]: connect from a[192.0.2.1]\n", i/10, i)
	}
	zw.Close()
	cut := gz.Bytes()[:gz.Len()*2/3]
	var st Stats
	var why []string
	r := &Reader{Stats: &st, Skip: func(src string, line int64, text []byte, err error) { why = append(why, err.Error()) }}
	n := 0
	err := r.Read(context.Background(), []Source{
		{Name: "cut.gz", R: bytes.NewReader(cut)},
		{Name: "magic-only.gz", R: strings.NewReader("\x1f\x8b")},
		{Name: "plain", R: strings.NewReader("2026-12-04T11:00:00Z mx postfix/smtpd[2]: connect from b[192.0.2.2]\n")},
	}, func(e *Event) { n++ })
	if err != nil {
		t.Fatal(err)
	}
	if n < 50 || n > 200 || st.Skipped != 2 || len(why) != 2 || !strings.Contains(why[0], "gzip") {
		t.Errorf("%d events, %d skipped: %q", n, st.Skipped, why)
	}
}
