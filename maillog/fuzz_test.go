package maillog

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// FuzzLog reads any bytes as a mail log, in every format: no line may
// make the parser or the rebuilder panic, steps come out in time order,
// every session opened is closed, and nothing is held once the log ends.
func FuzzLog(f *testing.F) {
	for _, s := range []string{
		"Dec  4 10:00:00 mx postfix/smtpd[1]: connect from a[192.0.2.1]\nDec  4 10:00:00 mx postfix/smtpd[1]: AB12C3: client=a[192.0.2.1], sasl_method=PLAIN, sasl_username=u\n",
		"2026-12-04T10:00:01Z mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from c[192.0.2.1]: 550 5.1.1 <n@x>: User unknown; from=<s@x> to=<n@x> proto=ESMTP helo=<c>\n",
		"2026-12-04T10:00:02Z mx postfix/qmgr[3]: AB12C3: from=<s@x>, size=300, nrcpt=1 (queue active)\n2026-12-04T10:00:03Z mx postfix/smtpd[1]: disconnect from c[192.0.2.1] ehlo=2 xclient=1 mail=1 rcpt=1/2 data=1 commands=5/6\n",
		"Dec  4 10:00:02 smta sm-mta[500]: 6B4A000500: from=<alice@x>, size=900, class=0, nrcpts=2, msgid=<m@x>, proto=ESMTPSA, daemon=MSA, relay=laptop [192.0.2.8]\n",
		"Dec  4 10:00:02 smta sm-mta[501]: 6B4A000500: to=<b@y>,<a@y>, delay=00:00:00, mailer=relay, stat=Sent (Ok)\nDec  4 10:00:00 smta sm-mta[500]: AUTH=server, relay=laptop [192.0.2.8], authid=alice, mech=PLAIN, bits=0\n",
		`{"__REALTIME_TIMESTAMP":"1796357701889064","_HOSTNAME":"mx","SYSLOG_IDENTIFIER":"postfix/smtpd","_PID":"123","MESSAGE":"connect from a[192.0.2.1]"}` + "\n",
		"Dec  4 10:00:00 mx postfix/cleanup[2]: BB01C2: reject: header Subject: x from a[192.0.2.1]; from=<s@x> to=<r@x> proto=ESMTP helo=<a>: 5.7.1 no\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, format := range []Format{Auto, Traditional, RFC3339, JournalJSON} {
			last := int64(-1 << 63)
			open := map[*Session]bool{}
			rb := NewRebuilder(time.Minute, func(s *Step) {
				if s.Time < last {
					t.Fatalf("step %s goes back in time", s.Kind)
				}
				last = s.Time
				switch s.Kind {
				case StepOpen:
					open[s.Session] = true
				case StepClose:
					if !open[s.Session] {
						t.Fatalf("session closed that was not open")
					}
					delete(open, s.Session)
				case StepRcpt:
					if s.Rcpt >= len(s.Message.Rcpts) {
						t.Fatalf("recipient %d of %d", s.Rcpt, len(s.Message.Rcpts))
					}
				}
			})
			r := &Reader{Format: format, Year: 2026, Location: time.UTC, Stats: &rb.Stats}
			if err := r.Read(context.Background(), []Source{{Name: "fuzz", R: bytes.NewReader(data)}}, rb.Add); err != nil {
				t.Fatal(err)
			}
			rb.Flush()
			if len(open) != 0 || rb.Open() != 0 || len(rb.queue) != 0 || len(rb.owner) != 0 {
				t.Fatalf("left open: %d sessions, %d conns, %d queue ids", len(open), rb.Open(), len(rb.queue))
			}
		}
	})
}
