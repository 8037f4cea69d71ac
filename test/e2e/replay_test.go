package e2e

// `sluice replay` of an MTA's log reports, rule by rule, what a live
// sluice in dry-run behind that MTA logged as "would refuse", "would
// hold", "would tag"..., with the same crossing keys: the same mixed
// traffic (several clients, senders, recipients, listeners and SMTP AUTH
// users, recipients the MTA itself refused, sessions open at once) goes
// through Postfix and through Sendmail with a live sluice attached, and
// then each MTA's log is replayed with the same config. The three forms
// of the report from that one run agree, and the HTML page is drawn as
// it should be in a real browser.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// replayConfig has a rule of every count and key the logs tell of, each
// asking for another action, in dry-run.
const replayConfig = `mode = "dry-run"
trusted = []

[log]
level = "info"

[[limit]]
name = "conns-per-ip"
count = "connections"
per = "client_ip"
rate = "2/1h"

[[limit]]
name = "conc-per-ip"
count = "concurrent"
per = "client_ip"
max = 2
action = "disconnect"

[[limit]]
name = "msgs-per-sender"
count = "messages"
per = "sender"
rate = "2/1h"
action = "hold"

[[limit]]
name = "msgs-per-domain"
count = "messages"
per = "sender_domain"
rate = "4/1h"
action = "delay"
delay = "1s"

[[limit]]
name = "rcpts-per-ip"
count = "recipients"
per = "client_ip"
rate = "5/1h"
action = "tag"

[[limit]]
name = "rcpt-cap"
count = "recipients"
per = "client_ip"
max_rcpt_per_message = 2
action = "reject"

[[limit]]
name = "per-listener"
count = "connections"
per = "listener"
rate = "3/1h"
action = "tag"
`

// userRule counts per SMTP AUTH user.
const userRule = `
[[limit]]
name = "msgs-per-user"
count = "messages"
per = "sasl_user"
rate = "1/1h"
action = "reject"
`

// replayed is what `sluice replay -json` prints, as far as compared.
type replayed struct {
	Lines      int64 `json:"lines"`
	Skipped    int64 `json:"skipped"`
	Sessions   int64 `json:"sessions"`
	Messages   int64 `json:"messages"`
	Partial    int64 `json:"partial"`
	MTARefused int64 `json:"mta_refused"`
	Rules      []struct {
		Rule    string           `json:"rule"`
		Would   map[string]int64 `json:"would"`
		Crossed int64            `json:"crossed"`
		Keys    int64            `json:"keys"`
		Top     []struct {
			Key   string `json:"key"`
			Count int64  `json:"count"`
			First string `json:"first"`
			Last  string `json:"last"`
		} `json:"top"`
		Hourly []struct {
			Hour  string `json:"hour"`
			Count int64  `json:"count"`
		} `json:"hourly"`
	} `json:"rules"`
}

// crossings are rule -> action -> count, and rule -> keys.
type crossings struct {
	would map[string]map[string]int64
	keys  map[string][]string
}

func (c crossings) String() string {
	var b strings.Builder
	rules := make([]string, 0, len(c.would))
	for r := range c.would {
		rules = append(rules, r)
	}
	sort.Strings(rules)
	for _, r := range rules {
		fmt.Fprintf(&b, "%s: %v keys %v\n", r, c.would[r], c.keys[r])
	}
	return b.String()
}

// liveCrossings reads the "would ..." lines of a live sluice.
func liveCrossings(sl *sluicetest.Sluice) crossings {
	c := crossings{would: map[string]map[string]int64{}, keys: map[string][]string{}}
	for _, l := range sl.Find(func(l sluicetest.LogLine) bool { return strings.HasPrefix(l.Msg(), "would ") }) {
		rule, action, key := l.Str("rule"), l.Str("action"), l.Str("key")
		if c.would[rule] == nil {
			c.would[rule] = map[string]int64{}
		}
		c.would[rule][action]++
		if !slices.Contains(c.keys[rule], key) {
			c.keys[rule] = append(c.keys[rule], key)
		}
	}
	for r := range c.keys {
		sort.Strings(c.keys[r])
	}
	return c
}

func (rep *replayed) crossings() crossings {
	c := crossings{would: map[string]map[string]int64{}, keys: map[string][]string{}}
	for _, r := range rep.Rules {
		for a, n := range r.Would {
			if n > 0 {
				if c.would[r.Rule] == nil {
					c.would[r.Rule] = map[string]int64{}
				}
				c.would[r.Rule][a] = n
			}
		}
		for _, k := range r.Top {
			c.keys[r.Rule] = append(c.keys[r.Rule], k.Key)
		}
		sort.Strings(c.keys[r.Rule])
	}
	return c
}

// client is one SMTP client of the traffic: how to connect as it.
type client struct {
	dial func(t *testing.T) *mta.Client
}

// traffic is the mixed load both MTAs take: four clients, each with a
// few sessions of one or two messages to one to three recipients (one of
// them unknown to the MTA), from senders of three domains; three
// sessions of one client open at once; then the submission listener.
type traffic struct {
	clients    []client
	unknown    string // a recipient the MTA refuses itself
	submission []client
}

var trafficRcpts = [][]string{
	{"r1@dest.example"},
	{"r1@dest.example", "r2@dest.example"},
	{"r1@dest.example", "UNKNOWN", "r3@other.example"},
	{"r1@dest.example", "r2@dest.example", "r3@other.example"},
}

var trafficSenders = []string{"a@one.example", "b@one.example", "c@two.example", "d@three.example", "e@two.example"}

// run sends the traffic and returns how many messages the MTA accepted.
func (tr traffic) run(t *testing.T) int {
	accepted := 0
	send := func(c *mta.Client, from string, rcpts []string) {
		var to []string
		for _, r := range rcpts {
			if r == "UNKNOWN" {
				r = tr.unknown
			}
			to = append(to, r)
		}
		res, err := c.Send(from, to, mta.NewMessage(from, to[0], "replay"))
		if err != nil {
			t.Fatalf("send from %s: %v", from, err)
		}
		if res.Accepted() {
			accepted++
		}
	}
	n := 0
	for round := 0; round < 3; round++ {
		for i, cl := range tr.clients[:3] {
			c := cl.dial(t)
			msgs := 1 + (i+round)%2
			for m := 0; m < msgs; m++ {
				send(c, trafficSenders[n%len(trafficSenders)], trafficRcpts[n%len(trafficRcpts)])
				n++
			}
			// A transaction the MTA refuses whole: its only recipient is
			// unknown.
			if (i+round)%3 == 0 {
				send(c, trafficSenders[(n+1)%len(trafficSenders)], []string{"UNKNOWN"})
			}
			c.Quit()
		}
	}
	// Three sessions of one client open at once, each sending two
	// messages in turn with the others. (Sendmail logs neither the start
	// nor the end of a session: the log shows them open at once by their
	// lines interleaving.)
	var open []*mta.Client
	for i := 0; i < 3; i++ {
		open = append(open, tr.clients[3].dial(t))
	}
	for m := 0; m < 2; m++ {
		for i, c := range open {
			send(c, trafficSenders[(i+m)%len(trafficSenders)], []string{"r1@dest.example"})
		}
	}
	for _, c := range open {
		c.Quit()
	}
	for i, cl := range tr.submission {
		c := cl.dial(t)
		send(c, fmt.Sprintf("user%d@one.example", i%2), []string{"r2@dest.example", "r3@other.example"})
		c.Quit()
	}
	return accepted
}

// replayLog runs `sluice replay` over log with config, writing all three
// forms of the report, and checks that they agree.
func replayLog(t *testing.T, config, log string) (*replayed, string) {
	t.Helper()
	dir := testenv.Dir(t, "replay")
	html := filepath.Join(dir, "report.html")
	text := filepath.Join(dir, "report.txt")
	res := sluicetest.RunSluice(t, "replay", "-config", config, "-json", "-html", html, "-text", text, log)
	if res.Code != 0 {
		t.Fatalf("sluice replay: exit %d\n%s", res.Code, res.Stderr)
	}
	var rep replayed
	if err := json.Unmarshal([]byte(res.Stdout), &rep); err != nil {
		t.Fatalf("replay -json: %v\n%s", err, res.Stdout)
	}
	if rep.Skipped != 0 || rep.Lines == 0 {
		t.Errorf("replay read %d lines and skipped %d\n%s", rep.Lines, rep.Skipped, res.Stderr)
	}
	b, err := os.ReadFile(text)
	if err != nil {
		t.Fatal(err)
	}
	checkTextAgrees(t, &rep, string(b))
	return &rep, html
}

// checkTextAgrees compares the text table's rows with the JSON's rules.
func checkTextAgrees(t *testing.T, rep *replayed, text string) {
	t.Helper()
	rows := map[string]string{}
	in := false
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "RULE ") {
			in = true
			continue
		}
		if in && strings.TrimSpace(line) == "" {
			break
		}
		if in {
			f := strings.Fields(line)
			rows[f[0]] = line
		}
	}
	for _, r := range rep.Rules {
		row, ok := rows[r.Rule]
		if !ok {
			t.Errorf("text report has no row for %s:\n%s", r.Rule, text)
			continue
		}
		for a, n := range r.Would {
			if n > 0 && !strings.Contains(row, fmt.Sprintf("%s %d", a, n)) {
				t.Errorf("text row of %s says %q, JSON would.%s = %d", r.Rule, row, a, n)
			}
		}
		if r.Crossed == 0 && !strings.Contains(row, " - ") {
			t.Errorf("text row of %s says %q for a rule that never crossed", r.Rule, row)
		}
	}
}

// compareCrossings fails t unless the replay found what the live daemon
// logged, and the traffic made every rule cross.
func compareCrossings(t *testing.T, live, rep crossings, rules []string) {
	t.Helper()
	for _, r := range rules {
		if len(live.would[r]) == 0 {
			t.Errorf("live sluice: rule %s never crossed; the traffic proves nothing for it\nlive:\n%v", r, live)
		}
	}
	if live.String() != rep.String() {
		t.Errorf("replay differs from the live daemon\nlive:\n%v\nreplay:\n%v", live, rep)
	}
}

var replayRules = []string{"conns-per-ip", "conc-per-ip", "msgs-per-sender", "msgs-per-domain", "rcpts-per-ip", "rcpt-cap", "per-listener"}

func TestReplayPostfixMatchesLive(t *testing.T) {
	testenv.Require(t)
	config := replayConfig + userRule
	sl := sluicetest.StartSluice(t, config)
	users := map[string]string{"user0@one.example": "secret0", "user1@one.example": "secret1"}
	pf := mta.StartPostfix(t, mta.PostfixOptions{
		Milter: sl.Listen, Submission: true, SASLUsers: users,
		// Recipients outside this table are unknown: Postfix refuses
		// them itself, before any milter sees them.
		Main: map[string]string{"relay_recipient_maps": "inline:{r1@dest.example=ok, r2@dest.example=ok, r3@other.example=ok}"},
	})
	var clients []client
	for i := 0; i < 4; i++ {
		ip, name := fmt.Sprintf("192.0.2.%d", 10+i), fmt.Sprintf("c%d.example.net", i)
		clients = append(clients, client{dial: func(t *testing.T) *mta.Client {
			c, err := mta.Dial(pf.Addr)
			if err != nil {
				t.Fatal(err)
			}
			r, err := c.XClient("ADDR=" + ip + " NAME=" + name)
			mustOK(t, "XCLIENT", r, err)
			r, err = c.Ehlo(name)
			mustOK(t, "EHLO", r, err)
			return c
		}})
	}
	var sub []client
	for i := 0; i < 4; i++ {
		user := fmt.Sprintf("user%d@one.example", i%2)
		sub = append(sub, client{dial: func(t *testing.T) *mta.Client {
			c, err := mta.Dial(pf.SubmissionAddr)
			if err != nil {
				t.Fatal(err)
			}
			r, err := c.Ehlo("laptop.example")
			mustOK(t, "EHLO", r, err)
			r, err = c.AuthPlain(user, users[user])
			if err != nil || r.Code != 235 {
				t.Fatalf("AUTH %s: %v %v", user, r, err)
			}
			return c
		}})
	}
	accepted := traffic{clients: clients, unknown: "nobody@dest.example", submission: sub}.run(t)
	pf.WaitDelivered(accepted, 60*time.Second)
	replayAndCompare(t, sl, pf.Log, "Postfix", append(replayRules, "msgs-per-user"))
}

func TestReplaySendmailMatchesLive(t *testing.T) {
	testenv.Require(t)
	sl := sluicetest.StartSluice(t, replayConfig+userRule)
	msa := testenv.FreePort(t)
	users := map[string]string{"user0@one.example": "secret0", "user1@one.example": "secret1"}
	sm := mta.StartSendmail(t, mta.SendmailOptions{
		Milter: sl.Listen, Syslog: true, SASLUsers: users,
		MC: fmt.Sprintf("DAEMON_OPTIONS(`Port=%d, Addr=127.0.0.1, Family=inet, Name=MSA')dnl\n", msa),
	})
	msaAddr := fmt.Sprintf("127.0.0.1:%d", msa)
	testenv.WaitFor(t, 20*time.Second, "sendmail's MSA", func() error { return testenv.TCPListening(msaAddr) })
	dial := func(addr, from, user string) client {
		return client{dial: func(t *testing.T) *mta.Client {
			c, err := mta.DialFrom(addr, from)
			if err != nil {
				t.Fatal(err)
			}
			r, err := c.Ehlo("client.example.net")
			mustOK(t, "EHLO", r, err)
			if user != "" {
				if r, err := c.AuthPlain(user, users[user]); err != nil || r.Code != 235 {
					t.Fatalf("AUTH %s: %v %v", user, r, err)
				}
			}
			return c
		}}
	}
	var clients, sub []client
	for i := 0; i < 4; i++ {
		clients = append(clients, dial(sm.Addr, fmt.Sprintf("127.0.0.%d", 10+i), ""))
		sub = append(sub, dial(msaAddr, fmt.Sprintf("127.0.0.%d", 20+i%2), fmt.Sprintf("user%d@one.example", i%2)))
	}
	accepted := traffic{clients: clients, unknown: "nosuchuser@smta.example.test", submission: sub}.run(t)
	sm.WaitDelivered(accepted, 60*time.Second)
	replayAndCompare(t, sl, sm.Log, "Sendmail", append(replayRules, "msgs-per-user"))
}

// replayAndCompare waits for the MTA's log to settle, replays it with
// the live sluice's config and compares what both found; the HTML report
// is checked in Chromium.
func replayAndCompare(t *testing.T, sl *sluicetest.Sluice, mtaLog func() string, name string, rules []string) {
	t.Helper()
	waitLogQuiet(t, mtaLog)
	log := filepath.Join(testenv.Dir(t, "maillog"), "maillog")
	if err := os.WriteFile(log, []byte(mtaLog()), 0o644); err != nil {
		t.Fatal(err)
	}
	rep, html := replayLog(t, sl.Config, log)
	compareCrossings(t, liveCrossings(sl), rep.crossings(), rules)
	if rep.MTARefused == 0 {
		t.Errorf("replay says %s refused nothing; it refused the unknown recipients", name)
	}
	checkHTMLReport(t, html, rep)
	t.Logf("replay: %d lines, %d sessions, %d messages (%d partial), %d refused by %s", rep.Lines, rep.Sessions, rep.Messages, rep.Partial, rep.MTARefused, name)
}

// waitLogQuiet waits until the log has not grown for a second: the last
// delivery lines are written after the sink has the message.
func waitLogQuiet(t *testing.T, log func() string) {
	t.Helper()
	var mu sync.Mutex
	last, since := -1, time.Now()
	testenv.WaitFor(t, 30*time.Second, "the mail log to settle", func() error {
		mu.Lock()
		defer mu.Unlock()
		if n := len(log()); n != last {
			last, since = n, time.Now()
		}
		if time.Since(since) < time.Second {
			return fmt.Errorf("the log grew less than a second ago")
		}
		return nil
	})
}
