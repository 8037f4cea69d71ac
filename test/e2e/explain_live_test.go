package e2e

// `sluice explain` drives the same engine as the daemon: the same facts
// through a running sluice, driven by go-milter's client as the MTA
// drives it, and through `sluice explain -json` get the same decision at
// every stage, the same reply text, and the same header changes at the
// end of the message — sender checks through [dns] included.

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/d--j/go-milter"

	"sluice/test/dnstest"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// explained is what `sluice explain -json` prints, as far as compared.
type explained struct {
	Checks string `json:"checks"`
	Stages []struct {
		Label    string `json:"label"`
		Decision struct {
			Kind  string `json:"kind"`
			Reply string `json:"reply"`
		} `json:"decision"`
	} `json:"stages"`
	Edits []struct {
		Kind  string `json:"kind"`
		Name  string `json:"name"`
		Value string `json:"value"`
		Index int    `json:"index"`
	} `json:"edits"`
	Repeat []struct {
		Session  int    `json:"session"`
		Label    string `json:"label"`
		Decision struct {
			Kind  string `json:"kind"`
			Reply string `json:"reply"`
		} `json:"decision"`
	} `json:"repeat"`
}

// answers says, stage by stage, what the session got ("mail: reply 451
// ..."), then the edits ("edit insert 0 Authentication-Results: ...").
func (e *explained) answers(session int) []string {
	var out []string
	for _, s := range e.Stages {
		kind, reply := s.Decision.Kind, s.Decision.Reply
		for _, r := range e.Repeat {
			if r.Label == s.Label && r.Session <= session {
				kind, reply = r.Decision.Kind, r.Decision.Reply
			}
		}
		out = append(out, strings.TrimSpace(s.Label+": "+kind+" "+reply))
		if kind != "continue" && s.Label != "connect" && s.Label != "helo" && !strings.HasPrefix(s.Label, "rcpt ") {
			break // the message ends there; later stages of the first session do not happen
		}
	}
	if session == 1 {
		for _, e := range e.Edits {
			out = append(out, fmt.Sprintf("edit %s %d %s: %s", e.Kind, e.Index, e.Name, e.Value))
		}
	}
	return out
}

// facts are one session's, as explain takes them.
type facts struct {
	ip, helo, sender string
	rcpts            []string
	size             int
}

func (f facts) explainArgs(config string) []string {
	args := []string{"explain", "-json", "-config", config, "-client", f.ip, "-helo", f.helo, "-sender", f.sender,
		"-size", fmt.Sprint(f.size)}
	for _, r := range f.rcpts {
		args = append(args, "-rcpt", r)
	}
	return args
}

// liveSession drives one session through sluice's milter socket as Postfix
// would and says what each stage got, as explained.answers does.
func liveSession(t *testing.T, listen string, f facts, first bool) []string {
	t.Helper()
	network, addr, err := testenv.SplitSpec(listen)
	if err != nil {
		t.Fatal(err)
	}
	macros := milter.NewMacroBag()
	macros.Set("{daemon_name}", "smtpd")
	macros.Set("j", "mx.sluice.test")
	macros.Set("{auth_authen}", "")
	c := milter.NewClient(network, addr, milter.WithDialer(&net.Dialer{Timeout: 5 * time.Second}),
		milter.WithReadTimeout(30*time.Second), milter.WithWriteTimeout(10*time.Second))
	s, err := c.Session(macros)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var out []string
	// answer records one stage and reports whether the session goes on.
	answer := func(label string, act *milter.Action, err error) bool {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", label, err)
		}
		switch {
		// go-milter answers accept to sluice's continue at the end of
		// the message.
		case act.Type == milter.ActionContinue, label == "data" && act.Type == milter.ActionAccept:
			out = append(out, label+": continue")
			return true
		case act.Type == milter.ActionAccept:
			out = append(out, label+": accept")
		case act.Type == milter.ActionRejectWithCode:
			kind := "reply"
			if act.SMTPCode == 421 {
				kind = "disconnect"
			}
			_, text, _ := strings.Cut(act.SMTPReply, " ")
			out = append(out, fmt.Sprintf("%s: %s %d %s", label, kind, act.SMTPCode, text))
		default:
			t.Fatalf("%s: answered %v", label, act)
		}
		return false
	}
	if act, err := s.Conn("unknown", milter.FamilyInet, 25, f.ip); !answer("connect", act, err) {
		return out
	}
	if act, err := s.Helo(f.helo); !answer("helo", act, err) {
		return out
	}
	if act, err := s.Mail(f.sender, ""); !answer("mail", act, err) {
		s.Abort(nil)
		return out
	}
	ok := 0
	for _, r := range f.rcpts {
		if act, err := s.Rcpt(r, ""); answer("rcpt "+r, act, err) {
			ok++
		}
	}
	if ok == 0 {
		s.Abort(nil)
		return out
	}
	if act, err := s.DataStart(); err != nil || act.Type != milter.ActionContinue {
		t.Fatalf("DATA: %+v %v", act, err)
	}
	if act, err := s.HeaderEnd(); err != nil || act.Type != milter.ActionContinue {
		t.Fatalf("end of header: %+v %v", act, err)
	}
	mods, act, err := s.BodyReadFrom(strings.NewReader(strings.Repeat("x", f.size-2)))
	// Explain prints the edits of its first session only.
	if answer("data", act, err) && first {
		for _, m := range mods {
			switch m.Type {
			case milter.ActionInsertHeader:
				out = append(out, fmt.Sprintf("edit insert %d %s: %s", m.HeaderIndex, m.HeaderName, m.HeaderValue))
			case milter.ActionAddHeader:
				out = append(out, fmt.Sprintf("edit add 0 %s: %s", m.HeaderName, m.HeaderValue))
			case milter.ActionChangeHeader:
				out = append(out, fmt.Sprintf("edit remove %d %s: ", m.HeaderIndex, m.HeaderName))
			case milter.ActionQuarantine:
				out = append(out, fmt.Sprintf("edit quarantine 0 : %s", m.Reason))
			}
		}
	}
	s.Abort(nil)
	return out
}

func TestExplainMatchesLiveSluice(t *testing.T) {
	testenv.Require(t)
	dns := dnstest.Start(t, dnstest.NewZone().MustAddText(
		`spf-fail.example. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"`,
		`spf-pass.example. 300 IN TXT "v=spf1 ip4:198.51.100.0/24 -all"`,
		`9.100.51.198.zen.example. 300 IN A 127.0.0.2`,
	))
	checks := `authserv_id = "mx.sluice.test"
trusted = []

[dns]
servers = ["%s"]

[spf]
enabled = true
fail = "reject"
mode = "%s"

[[checks.dnsbl]]
zone = "zen.example"
action = "reject"
mode = "dry-run"

[[limit]]
name = "rcpt-cap"
count = "recipients"
max_rcpt_per_message = 1
`
	limits := `trusted = []

[[limit]]
name = "per-sender"
count = "messages"
per = "sender"
rate = "3/1h"

[[limit]]
name = "gmail"
count = "recipients"
per = "rcpt_domain"
rate = "1/1h"
match.rcpt_domain = ["gmail.com"]

[[limit]]
name = "tagged"
count = "messages"
per = "client_ip"
rate = "1/1h"
action = "tag"
`
	for _, tc := range []struct {
		name     string
		config   string
		f        facts
		sessions int
		checks   string
	}{
		{"checks tagged, a recipient over the cap", fmt.Sprintf(checks, dns.Addr(), "tag"),
			facts{"198.51.100.9", "client.example.net", "alice@spf-fail.example", []string{"bob@example.net", "carol@example.net"}, 300}, 1, "on"},
		{"SPF refuses", fmt.Sprintf(checks, dns.Addr(), "enforce"),
			facts{"198.51.100.9", "client.example.net", "alice@spf-fail.example", []string{"bob@example.net"}, 300}, 1, "on"},
		{"SPF passes", fmt.Sprintf(checks, dns.Addr(), "enforce"),
			facts{"198.51.100.7", "client.example.net", "alice@spf-pass.example", []string{"bob@example.net"}, 300}, 1, "on"},
		{"limits over four sessions", limits,
			facts{"192.0.2.7", "client.example.net", "alice@example.org", []string{"bob@gmail.com", "carol@example.net"}, 2000}, 4, "none"},
		{"built-in policy: accept at MAIL FROM", "",
			facts{"192.0.2.8", "client.example.net", "alice@example.org", []string{"bob@example.net"}, 300}, 1, "none"},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			sl := sluicetest.StartSluice(t, tc.config)
			res := sluicetest.RunSluice(t, tc.f.explainArgs(sl.Config)...)
			if res.Code != 0 {
				t.Fatalf("explain: exit %d: %s", res.Code, res.Stderr)
			}
			var e explained
			if err := json.Unmarshal([]byte(res.Stdout), &e); err != nil {
				t.Fatalf("explain -json: %v\n%s", err, res.Stdout)
			}
			if e.Checks != tc.checks {
				t.Errorf("explain says the checks are %q, want %q", e.Checks, tc.checks)
			}
			for i := 1; i <= tc.sessions; i++ {
				want := e.answers(i)
				got := liveSession(t, sl.Listen, tc.f, i == 1)
				if strings.Join(got, "\n") != strings.Join(want, "\n") {
					t.Errorf("session %d:\nlive sluice:\n  %s\nsluice explain:\n  %s", i, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
				} else {
					t.Logf("session %d, live and explained alike:\n  %s", i, strings.Join(got, "\n  "))
				}
			}
		})
	}
}
