package limits

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sluice/policy"
)

func writeTable(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "quotas")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestOutboundConfigErrors(t *testing.T) {
	hold := policy.ActionHold
	tempfail := policy.ActionTempfail
	base := func(f func(r *Rule)) Rule {
		r := Rule{Name: "r", Count: "recipients", Per: "sasl_user", Rate: "10/1h"}
		f(&r)
		return r
	}
	for _, tc := range []struct {
		r    Rule
		want string
	}{
		{base(func(r *Rule) { r.Of = "rcpt_domain" }), `only a rule with count = "distinct"`},
		{base(func(r *Rule) { r.Count = "distinct" }), "missing: different values of what"},
		{base(func(r *Rule) { r.Count, r.Of = "distinct", "colour" }), `unknown value "colour"`},
		{base(func(r *Rule) { r.Count, r.Of, r.Rate = "distinct", "rcpt_domain", []any{"1/1h", "2/1d"} }), "takes one rate"},
		{base(func(r *Rule) { r.Count, r.Of, r.Burst = "distinct", "rcpt_domain", 3 }), "takes no burst"},
		{base(func(r *Rule) { r.Count, r.Of, r.CountOn = "distinct", "rcpt_domain", "accepted" }), "takes no count_on"},
		{base(func(r *Rule) { r.Overrides = "/etc/quotas" }), `want "file:/path/to/table" or "runtime"`},
		{base(func(r *Rule) {
			r.Count, r.Rate, r.Max, r.Per, r.Overrides = "concurrent", nil, 3, "client_ip", "runtime"
		}), "no rate to override"},
		{base(func(r *Rule) { r.Overrides = "file:/nonexistent/quotas" }), "no such file"},
		{base(func(r *Rule) { r.RestrictAction = &hold }), "only with restrict_for"},
		{base(func(r *Rule) { r.RestrictTimezone = "UTC" }), "only with restrict_for"},
		{base(func(r *Rule) { r.RestrictFor = "a while" }), `want a duration ("24h", "2d"), "today" or "until_released"`},
		{base(func(r *Rule) { r.RestrictFor, r.RestrictTimezone = "24h", "UTC" }), `only with restrict_for = "today"`},
		{base(func(r *Rule) { r.RestrictFor, r.RestrictTimezone = "today", "Mars/Olympus" }), "not a time zone"},
		{base(func(r *Rule) {
			r.RestrictFor, r.RestrictAction = "today", &tempfail
			r.RestrictReply = policy.MustReply("550 5.7.1 no")
		}), "restrict_reply"},
		{base(func(r *Rule) { r.Count, r.Rate, r.Max, r.Per, r.RestrictFor = "concurrent", nil, 3, "client_ip", "1h" }), "restricts nothing"},
	} {
		_, err := New(&Config{Trusted: []string{}, Rules: []Rule{tc.r}}, nil, Options{Store: yesStore{}})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one saying %q", tc.r, err, tc.want)
		}
	}
}

// A bad line of an overrides table fails the config with the file and
// line, whatever is wrong with it.
func TestOverridesTableErrors(t *testing.T) {
	for _, tc := range []struct {
		line, want string
	}{
		{"sasl_user:bob@example.com 5/x", ":2: sasl_user:bob@example.com: rate"},
		{"sasl_user:bob@example.com", ":2: sasl_user:bob@example.com: no limit"},
		{"sender:bob@example.com 5/1h", `:2: key "sender:bob@example.com" is per sender; rule "r" counts per sasl_user`},
		{"sasl_user:alice@example.com 9/1h", ":2: sasl_user:alice@example.com is given again (first at line 1)"},
		{"sasl_user:Alice@EXAMPLE.com 9/1h", ":2: sasl_user:Alice@EXAMPLE.com is given again (first at line 1)"},
		{"sasl_user:bob 1/1h, 2/1h, 3/1h, 4/1h, 5/1h, 6/1h, 7/1h, 8/1h, 9/1h, 10/1h, 11/1h", "11 windows"},
		{"sasl_user:bob 5/100d", "at most 52 days"},
		{"sasl_user:bob " + strings.Repeat("x", 5000), "longer than 4096 bytes"},
	} {
		p := writeTable(t, "sasl_user:alice@example.com 5/1h\n"+tc.line+"\n")
		r := Rule{Name: "r", Count: "recipients", Per: "sasl_user", Rate: "2/1h", Overrides: "file:" + p}
		_, err := New(&Config{Trusted: []string{}, Rules: []Rule{r}}, nil, Options{Store: yesStore{}})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%q: error %v, want one naming %s and saying %q", tc.line, err, p, tc.want)
		}
	}
	p := writeTable(t, "client_ip:192.0.2.0/24 5/1h\n")
	r := Rule{Name: "r", Count: "messages", Per: "client_ip", Rate: "2/1h", Overrides: "file:" + p}
	if _, err := New(&Config{Trusted: []string{}, Rules: []Rule{r}}, nil, Options{Store: yesStore{}}); err == nil || !strings.Contains(err.Error(), "/32 networks") {
		t.Errorf("a /24 in a table of a /32 rule: %v", err)
	}
	r.IPv4Prefix = 24
	if _, err := New(&Config{Trusted: []string{}, Rules: []Rule{r}}, nil, Options{Store: yesStore{}}); err != nil {
		t.Errorf("a /24 in a table of a /24 rule: %v", err)
	}
}

// quotaEnv is recipients per SASL user at 2/1h, with a table: bob 5/1h,
// carol unlimited, dave 0, everyone else at example.net 3/1h.
func quotaEnv(t *testing.T) *testEnv {
	t.Helper()
	p := writeTable(t, `# per-customer quotas
sasl_user:bob@example.com 5/1h
sasl_user:carol@example.com   unlimited

sasl_user:dave@example.com	0  # blocked
sasl_user:@example.net 3/1h
`)
	return newTestEnv(t, rules(Rule{Name: "rcpts", Count: "recipients", Per: "sasl_user", Rate: "2/1h", Overrides: "file:" + p}), policy.ModeEnforce)
}

// sends runs n recipients of user and returns their refusals, '.' for
// accepted and 'x' for refused.
func (v *testEnv) sends(user string, n int) string {
	v.t.Helper()
	s := v.e.NewSession()
	f := &policy.Facts{ClientIP: ip1, SASLUser: user}
	v.mail(s, f, user)
	return refusals(v.t, n, func(i int) bool { return v.rcpt(s, f, fmt.Sprintf("r%d@example.org", i)) })
}

func TestOverridesTable(t *testing.T) {
	v := quotaEnv(t)
	for _, tc := range []struct{ user, want string }{
		{"alice@example.com", "..xx"},       // the rule's own 2/1h
		{"bob@example.com", ".....xx"},      // 5/1h
		{"carol@example.com", ".........."}, // unlimited
		{"dave@example.com", "xx"},          // 0
		{"erin@example.net", "...xx"},       // the domain's 3/1h
		{"Bob@Example.COM", "x"},            // bob, whatever the case
	} {
		if got := v.sends(tc.user, len(tc.want)); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.user, got, tc.want)
		}
	}
	// explain says where each limit comes from.
	for _, tc := range []struct{ user, limit, from string }{
		{"alice@example.com", "2/1h", "rule"},
		{"bob@example.com", "5/1h", "table " + v.e.rule("rcpts").over.path + ":2"},
		{"erin@example.net", "3/1h", "table " + v.e.rule("rcpts").over.path + ":6 (sasl_user:@example.net)"},
		{"carol@example.com", "unlimited", "table " + v.e.rule("rcpts").over.path + ":3"},
	} {
		tr := v.e.Explain(policy.StageRcpt, &policy.Facts{SASLUser: tc.user, Rcpt: "x@example.org"})
		if len(tr) != 1 || tr[0].Limit != tc.limit || tr[0].From != tc.from {
			t.Errorf("explain %s: %+v, want limit %s from %s", tc.user, tr, tc.limit, tc.from)
		}
	}
}

// A runtime limit applies at once on the host that set it, and on another
// engine on the same store (another host) from its next event, which the
// store refuses to count with the old limit; unlimit undoes it.
func TestRuntimeOverrides(t *testing.T) {
	a := quotaEnv(t)
	ctx := context.Background()
	b := newTestEnvOn(t, rules(a.e.rules[0].source()), policy.ModeEnforce, a.st, nil, a.clock)
	if got := a.sends("frank@example.com", 1); got != "." {
		t.Fatalf("frank before: %s", got)
	}
	l, err := a.e.Limit(ctx, "rcpts", "sasl_user:Frank@example.com", "1/1h, 10/1d", 0, "root@mx1")
	if err != nil || l.Key != "sasl_user:frank@example.com" || l.Limit != "1/1h,10/1d" || l.By != "root@mx1" {
		t.Fatalf("Limit: %+v %v", l, err)
	}
	// frank used 1 of 2/1h (half the hour); at 1/1h that is all of it.
	if got := a.sends("frank@example.com", 1); got != "x" {
		t.Errorf("frank on the host that set 1/1h: %s, want x", got)
	}
	if got := b.sends("frank@example.com", 1); got != "x" {
		t.Errorf("frank on another host: %s, want x", got)
	}
	// A runtime override wins over the table.
	if _, err := a.e.Limit(ctx, "rcpts", "sasl_user:bob@example.com", "unlimited", time.Hour, "root@mx1"); err != nil {
		t.Fatal(err)
	}
	if got := b.sends("bob@example.com", 8); got != "........" {
		t.Errorf("bob unlimited at runtime, on the other host: %s", got)
	}
	list, tables, err := b.e.Limits(ctx, "")
	if err != nil || len(list) != 2 || list[0].Key != "sasl_user:bob@example.com" || list[0].Until.IsZero() ||
		len(tables) != 1 || tables[0].Entries != 4 {
		t.Errorf("Limits = %+v %+v %v", list, tables, err)
	}
	a.clock.advance(time.Hour) // bob's runtime limit ends: the table again
	if got := b.sends("bob@example.com", 6); got != ".....x" {
		t.Errorf("bob past his runtime limit: %s, want .....x (his table's 5/1h; unlimited counted nothing)", got)
	}
	if _, ok, err := b.e.Unlimit(ctx, "rcpts", "sasl_user:frank@example.com"); !ok || err != nil {
		t.Errorf("Unlimit: %v %v", ok, err)
	}
	a.clock.advance(time.Hour)
	if got := a.sends("frank@example.com", 3); got != "..x" {
		t.Errorf("frank after unlimit, on the host that set it: %s, want ..x", got)
	}
	for _, tc := range []struct{ rule, key, spec, want string }{
		{"nope", "sasl_user:x", "1/1h", `no rule named "nope"`},
		{"rcpts", "sender:x@example.com", "1/1h", "is per sender"},
		{"rcpts", "sasl_user:x", "1/fortnight", "period"},
	} {
		if _, err := a.e.Limit(ctx, tc.rule, tc.key, tc.spec, 0, "t"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Limit(%s, %s, %s): %v, want %q", tc.rule, tc.key, tc.spec, err, tc.want)
		}
	}
	plain := newTestEnv(t, rules(Rule{Name: "plain", Count: "messages", Per: "sender", Rate: "1/1h"}), policy.ModeEnforce)
	if _, err := plain.e.Limit(ctx, "plain", "sender:x@example.com", "1/1h", 0, "t"); err == nil || !strings.Contains(err.Error(), "takes no overrides") {
		t.Errorf("Limit on a rule without overrides: %v", err)
	}
}

// source is the Rule a compiled rule came from, for tests that build a
// second engine of the same config.
func (c *rule) source() Rule {
	r := Rule{Name: c.name, Count: countNames[c.count], Per: c.keyer.dims[0].String(), Rate: c.limit}
	if c.over != nil {
		r.Overrides = "runtime"
		if c.over.path != "" {
			r.Overrides = "file:" + c.over.path
		}
	}
	return r
}

func TestDistinct(t *testing.T) {
	v := newTestEnv(t, rules(Rule{Name: "domains", Count: "distinct", Of: "rcpt_domain", Per: "sasl_user", Rate: "3/1h"}), policy.ModeEnforce)
	s := v.e.NewSession()
	f := &policy.Facts{ClientIP: ip1, SASLUser: "alice@example.com"}
	v.mail(s, f, "alice@example.com")
	var got []string
	for _, to := range []string{"a@one.example", "b@two.example", "c@One.Example", "d@three.example", "e@four.example", "f@two.example"} {
		f.Rcpt = to
		vs, refused := v.step(s, policy.StageRcpt, f)
		r := "."
		if refused {
			r = "x " + vs[0].Detail + " " + vs[0].Key
		}
		got = append(got, r)
	}
	want := []string{".", ".", ".", ".", "x distinct=4 sasl_user:alice@example.com", "."}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("alice's recipients: %q, want %q", got, want)
	}
	// Another user's domains are their own; a refused recipient added none.
	f.SASLUser = "bob@example.com"
	if _, refused := v.step(s, policy.StageRcpt, f); refused {
		t.Errorf("bob's first domain refused")
	}
	v.clock.advance(time.Hour)
	f.SASLUser, f.Rcpt = "alice@example.com", "x@five.example"
	if _, refused := v.step(s, policy.StageRcpt, f); refused {
		t.Errorf("alice's new domain an hour later refused")
	}
	// A recipient that another rule refuses gives its new domain back.
	v2 := newTestEnv(t, rules(
		Rule{Name: "domains", Count: "distinct", Of: "rcpt_domain", Per: "sasl_user", Rate: "2/1h"},
		Rule{Name: "rcpts", Count: "recipients", Per: "sasl_user", Rate: "1/1h"}), policy.ModeEnforce)
	s2 := v2.e.NewSession()
	f2 := &policy.Facts{SASLUser: "carol@example.com"}
	for _, to := range []string{"a@one.example", "b@two.example", "c@three.example"} {
		f2.Rcpt = to
		v2.step(s2, policy.StageRcpt, f2)
	}
	if n := v2.distinctLevel("domains", "sasl_user:carol@example.com"); n != 1 {
		t.Errorf("carol's domains counted: %d, want 1 (the recipients refused by rcpts gave theirs back)", n)
	}
}

func (v *testEnv) distinctLevel(rule, dk string) int64 {
	v.t.Helper()
	cs, err := v.e.Show(context.Background(), dk, rule)
	if err != nil || len(cs) != 1 || !cs[0].Distinct {
		v.t.Fatalf("show %s: %+v %v", dk, cs, err)
	}
	return cs[0].Count
}

// Distinct client networks: one password used from many places.
func TestDistinctClientNets(t *testing.T) {
	v := newTestEnv(t, rules(Rule{Name: "nets", Count: "distinct", Of: "client_net", Per: "sasl_user", Rate: "3/1d"}), policy.ModeEnforce)
	var got []string
	for _, ip := range []string{"192.0.2.1", "192.0.2.200", "198.51.100.7", "2001:db8:1:2::1", "2001:db8:1:ff::9", "203.0.113.5"} {
		s := v.e.NewSession()
		f := &policy.Facts{ClientIP: netip.MustParseAddr(ip), SASLUser: "alice@example.com"}
		got = append(got, map[bool]string{false: ".", true: "x"}[v.mail(s, f, "alice@example.com")])
	}
	// /24 and /48: 192.0.2.x once, 2001:db8:1::/48 once; the fourth
	// network is one too many.
	if strings.Join(got, "") != ".....x" {
		t.Errorf("alice from six addresses in four networks: %s, want .....x", strings.Join(got, ""))
	}
}

// A crossing restricts the key until the next midnight: later messages
// are held though the window has room; a release gives a grace; in
// dry-run the crossing only says it would restrict.
func TestRestrict(t *testing.T) {
	rule := Rule{Name: "rcpts", Count: "recipients", Per: "sasl_user", Rate: "2/1h", RestrictFor: "today", RestrictTimezone: "Europe/Paris"}
	v := newTestEnv(t, rules(rule), policy.ModeEnforce)
	v.clock.advance(20 * time.Hour) // 2030-01-01 20:00 UTC, 21:00 in Paris
	ctx := context.Background()
	s := v.e.NewSession()
	f := &policy.Facts{ClientIP: ip1, SASLUser: "alice@example.com"}
	v.mail(s, f, "alice@example.com")
	if got := refusals(t, 3, func(i int) bool { return v.rcpt(s, f, fmt.Sprintf("r%d@example.org", i)) }); got != "..x" {
		t.Fatalf("alice: %s", got)
	}
	midnight := time.Date(2030, 1, 1, 23, 0, 0, 0, time.UTC) // Paris midnight
	ev := s.Events()
	if len(ev) != 1 || ev[0].Kind != EventRestricted || ev[0].Key != "sasl_user:alice@example.com" || ev[0].Count != 3 || !ev[0].Until.Equal(midnight) {
		t.Fatalf("events of the crossing: %+v, want alice restricted until %v", ev, midnight)
	}
	v.clock.advance(90 * time.Minute) // the window has room again
	f.Rcpt = "late@example.org"
	vs, refused := v.step(s, policy.StageRcpt, f)
	if refused || len(vs) != 1 || vs[0].Action != policy.ActionHold || !strings.Contains(vs[0].Detail, "restricted for 1h30m0s") {
		t.Fatalf("alice later: refused %v %+v; want held as restricted", refused, vs)
	}
	v.e.NoteHeld(ctx, s, "4QUEUEID1")
	list, err := v.e.Restrictions(ctx, "")
	if err != nil || len(list) != 1 || list[0].Rule != "rcpts" || list[0].Key != "sasl_user:alice@example.com" || list[0].Count != 3 ||
		!list[0].Until.Equal(midnight) || len(list[0].Held) != 1 {
		t.Fatalf("Restrictions = %+v %v", list, err)
	}
	rel, err := v.e.Release(ctx, "sasl_user:alice@example.com", "")
	if err != nil || len(rel) != 1 || rel[0].Held[0] != "4QUEUEID1" {
		t.Fatalf("Release = %+v %v", rel, err)
	}
	// The grace lasts the day: crossings do not restrict again.
	if got := refusals(t, 4, func(i int) bool { return v.rcpt(s, f, fmt.Sprintf("g%d@example.org", i)) }); got != "..xx" {
		t.Errorf("alice released: %s, want ..xx (her rate, no restriction)", got)
	}
	if len(s.Events()) != 0 {
		t.Errorf("a crossing in the grace restricted: %+v", s.Events())
	}
	// The next day, a crossing restricts again.
	v.clock.advance(4 * time.Hour)
	v.rcpt(s, f, "n1@example.org")
	v.rcpt(s, f, "n2@example.org")
	v.rcpt(s, f, "n3@example.org")
	if ev := s.Events(); len(ev) != 1 || ev[0].Kind != EventRestricted {
		t.Errorf("the next day: %+v, want restricted again", ev)
	}

	dry := rule
	dry.Mode = policy.ModeDryRun
	d := newTestEnv(t, rules(dry), policy.ModeEnforce)
	s = d.e.NewSession()
	d.mail(s, f, "alice@example.com")
	for i := range 3 {
		d.rcpt(s, f, fmt.Sprintf("r%d@example.org", i))
	}
	if ev := s.Events(); len(ev) != 1 || ev[0].Kind != EventWouldRestrict {
		t.Errorf("dry-run crossing: %+v, want one would-restrict event", ev)
	}
	if list, _ := d.e.Restrictions(ctx, ""); len(list) != 0 {
		t.Errorf("dry-run restricted: %+v", list)
	}
}

// A restriction with restrict_action = "reject" refuses with 550 5.7.1
// and a text like Microsoft's, until released.
func TestRestrictReject(t *testing.T) {
	reject := policy.ActionReject
	v := newTestEnv(t, rules(Rule{Name: "msgs", Count: "messages", Per: "sasl_user", Rate: "1/1h",
		RestrictFor: "until_released", RestrictAction: &reject}), policy.ModeEnforce)
	s := v.e.NewSession()
	f := &policy.Facts{SASLUser: "mallory@example.com"}
	v.mail(s, f, "m@example.com")
	v.mail(s, f, "m@example.com")
	v.clock.advance(30 * 24 * time.Hour)
	vs, refused := v.step(s, policy.StageMail, f)
	if !refused {
		t.Fatalf("restricted until released, a month on: not refused")
	}
	d := v.decide.Decide(policy.StageMail, vs, &policy.Env{})
	if want := "550 5.7.1 Access denied, bad outbound sender: sasl_user:mallory@example.com is restricted (msgs)"; d.Reply != want {
		t.Errorf("reply %q, want %q", d.Reply, want)
	}
}
