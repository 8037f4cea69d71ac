package engine_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"sluice/auth"
	"sluice/engine"
	"sluice/limits"
	"sluice/limits/memstore"
	"sluice/policy"
	"sluice/smtp"
	"sluice/test/dnstest"
)

// checksEnv is an engine with SPF and a DNSBL, asking the loopback DNS
// server in test/dnstest.
func checksEnv(t *testing.T, mode smtp.Mode, dnsbl smtp.Mode, withLimit bool) (*engine.Engine, *recordingObserver) {
	t.Helper()
	srv := dnstest.Start(t, dnstest.NewZone().MustAddText(
		`spf-fail.example. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"`,
		`9.100.51.198.zen.example. 300 IN A 127.0.0.2`,
	))
	rules := &limits.Config{Trusted: []string{}}
	if withLimit {
		rules.Rules = []limits.Rule{senderRule("1/1h", "")}
	}
	obs := &recordingObserver{}
	eng := authEngine(t, srv, mode, rules, obs, func(ac *auth.Config) {
		ac.SPF.Enabled = true
		ac.SPF.Fail = policy.MustAction("reject")
		ac.Checks.DNSBL[0].Mode = dnsbl
	})
	return eng, obs
}

// authEngine builds an engine over rules, on a memory store of its own,
// with checks asking srv: a DNSBL zen.example that rejects, and what edit
// adds.
func authEngine(t *testing.T, srv *dnstest.Server, mode smtp.Mode, rules *limits.Config, obs engine.Observer, edit func(*auth.Config)) *engine.Engine {
	t.Helper()
	ac := auth.Config{AuthservID: "mx.sluice.test"}
	ac.Defaults()
	ac.DNS.Servers = []string{srv.Addr()}
	ac.Checks.DNSBL = []auth.DNSBL{{Zone: "zen.example", DNSCheck: auth.DNSCheck{Check: auth.Check{Action: policy.MustAction("reject")}}}}
	edit(&ac)
	ac.Defaults()
	if err := ac.Validate(); err != nil {
		t.Fatal(err)
	}
	checker, err := auth.New(&ac, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	store, err := memstore.New(memstore.Config{MaxKeys: 100}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	eng, err := engine.New(engine.Options{Policy: policyOf(mode), Rules: rules, Counting: limits.Options{Store: store}, Auth: checker, Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	return eng
}

// The sender checks answer at MAIL FROM: their results come with the
// decision, refusals refuse under enforce, and at the end of the message
// Authentication-Results and Received-SPF go to the top of the header
// and X-Sluice-Check to its end, saying the mode each check was applied
// in. The global mode reaches the headers as it reaches the decision.
func TestSenderChecks(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    smtp.Mode
		dnsbl   smtp.Mode
		refused string   // the MAIL FROM reply wanted; "" continue
		checks  []string // X-Sluice-Check values wanted, by prefix
	}{
		// The strictest refusal answers; of equals, the first in check
		// order: the client checks come before SPF.
		{"enforce", smtp.ModeEnforce, smtp.ModeEnforce, "550 5.7.1 Service unavailable; client host [198.51.100.9] blocked using zen.example", nil},
		{"dnsbl in dry-run", smtp.ModeEnforce, smtp.ModeDryRun, "550 5.7.23 SPF fail: [198.51.100.9]", nil},
		{"global tag", smtp.ModeTag, smtp.ModeEnforce, "", []string{
			"dnsbl:zen.example=listed action=reject mode=tag (", "spf=fail action=reject mode=tag (",
		}},
		{"global dry-run", smtp.ModeDryRun, smtp.ModeEnforce, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eng, obs := checksEnv(t, tc.mode, tc.dnsbl, false)
			ctx := context.Background()
			s := eng.Open(smtp.Client{IP: netip.MustParseAddr("198.51.100.9"), Name: "unknown", Listener: "smtpd"})
			defer s.Close(ctx)
			s.Stage(ctx, smtp.Connect)
			s.Helo("client.example.net")
			s.Stage(ctx, smtp.Helo)
			s.Mail("alice@spf-fail.example", "")
			d := s.Stage(ctx, smtp.Mail)
			var results []string
			for _, c := range d.Checks {
				results = append(results, c.Name+"="+c.Result)
			}
			if got := strings.Join(results, " "); got != "dnsbl:zen.example=listed spf=fail" {
				t.Errorf("check results %q", got)
			}
			if got := strings.Join(obs.checks, " "); got != "dnsbl:zen.example=listed spf=fail" {
				t.Errorf("the observer heard %q", got)
			}
			if tc.refused != "" {
				if d.Kind != smtp.Reply || !strings.HasPrefix(d.Reply, tc.refused) {
					t.Fatalf("MAIL FROM: %+v; want %q", d, tc.refused)
				}
				return
			}
			if d.Refused() {
				t.Fatalf("MAIL FROM refused: %s", d.Reply)
			}
			s.Rcpt("postmaster@mx.sluice.test")
			s.Stage(ctx, smtp.Rcpt)
			s.Header("Authentication-Results", "mx.sluice.test; spf=pass smtp.mailfrom=forged.example")
			s.Body(make([]byte, 10))
			s.Stage(ctx, smtp.Data)
			edits := s.Edits()
			if len(edits) < 3 || edits[0].Kind != smtp.Remove || edits[0].Name != "Authentication-Results" ||
				edits[1].Kind != smtp.Insert || edits[1].Index != 0 || edits[1].Name != "Authentication-Results" ||
				edits[2].Kind != smtp.Insert || edits[2].Index != 1 || edits[2].Name != "Received-SPF" {
				t.Fatalf("edits %+v: the forged field out, then Authentication-Results at 0 and Received-SPF at 1", edits)
			}
			if !strings.Contains(edits[1].Value, "spf=fail") {
				t.Errorf("Authentication-Results %q", edits[1].Value)
			}
			var checks []string
			for _, e := range editsOf(edits[3:], smtp.Add) {
				if e.Name != auth.CheckHeader {
					t.Errorf("added %s", e.Name)
				}
				checks = append(checks, e.Value)
			}
			if len(checks) != len(tc.checks) {
				t.Fatalf("X-Sluice-Check %q; want %d starting %q", checks, len(tc.checks), tc.checks)
			}
			for i := range checks {
				if !strings.HasPrefix(checks[i], tc.checks[i]) {
					t.Errorf("X-Sluice-Check %q; want it to start %q", checks[i], tc.checks[i])
				}
			}
		})
	}
}

// Cheap before expensive: a MAIL FROM that a limit refuses asks no DNS,
// and its decision carries no check results.
func TestNoChecksAfterALimitRefuses(t *testing.T) {
	eng, obs := checksEnv(t, smtp.ModeEnforce, smtp.ModeDryRun, true)
	ctx := context.Background()
	s := eng.Open(smtp.Client{IP: netip.MustParseAddr("192.0.2.9")})
	defer s.Close(ctx)
	for i := range 2 {
		s.Mail("alice@spf-fail.example", "")
		d := s.Stage(ctx, smtp.Mail)
		s.EndMessage(ctx, false)
		if i == 1 && (d.Kind != smtp.Reply || !strings.Contains(d.Reply, "per-sender") || len(d.Checks) != 0) {
			t.Errorf("second message: %+v; want the limit's refusal and no checks", d)
		}
	}
	if n := len(obs.checks); n != 2 {
		t.Errorf("%d checks ran, want the first message's 2", n)
	}
}

// The client tables answer at connect: a REJECT refuses the session there
// with the table's text, a DELAY pauses the connect reply, a TAG shows
// on every message, and an OK lifts the blocklist for the session's
// messages — while the limits still count the client.
func TestClientTablesAtConnect(t *testing.T) {
	srv := dnstest.Start(t, dnstest.NewZone().MustAddText(`9.100.51.198.zen.example. 300 IN A 127.0.0.2`, `8.100.51.198.zen.example. 300 IN A 127.0.0.2`))
	table := filepath.Join(t.TempDir(), "clients.cidr")
	if err := os.WriteFile(table, []byte("198.51.100.9  OK\n203.0.113.0/24  REJECT Known spam network\n192.0.2.0/24  DELAY 2s\n198.51.100.8  TAG watched\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rules := &limits.Config{Trusted: []string{}, Rules: []limits.Rule{{Name: "per-ip", Count: "messages", Per: "client_ip", Rate: "1/1h"}}}
	eng := authEngine(t, srv, smtp.ModeEnforce, rules, nil, func(ac *auth.Config) {
		ac.Checks.ClientAccess = auth.AccessTables{{File: "cidr:" + table}}
	})
	ctx := context.Background()
	open := func(ip string) (smtp.Session, smtp.Decision) {
		s := eng.Open(smtp.Client{IP: netip.MustParseAddr(ip), Name: "unknown", Listener: "mx.example.test"})
		t.Cleanup(func() { s.Close(ctx) })
		return s, s.Stage(ctx, smtp.Connect)
	}
	mail := func(s smtp.Session) smtp.Decision {
		s.Helo("client.example.net")
		s.Stage(ctx, smtp.Helo)
		s.Mail("someone@partner.example", "")
		return s.Stage(ctx, smtp.Mail)
	}

	_, d := open("203.0.113.5")
	if d.Kind != smtp.Reply || d.Reply != "550 5.7.1 Client host rejected: Known spam network" {
		t.Errorf("listed network at connect: %+v", d)
	}
	if len(d.Checks) != 1 || d.Checks[0].Name != "client_access" || d.Checks[0].Result != "reject" {
		t.Errorf("connect checks %+v", d.Checks)
	}
	if _, d = open("192.0.2.10"); d.Refused() || d.Pause != 2*time.Second {
		t.Errorf("tarpit at connect: %+v; want a pause of 2s", d)
	}
	// The whitelisted client skips the blocklist, not the limit.
	s, d := open("198.51.100.9")
	if d.Refused() {
		t.Fatalf("whitelisted client: %+v", d)
	}
	if d = mail(s); d.Refused() {
		t.Errorf("whitelisted, listed client at MAIL FROM: %+v", d)
	}
	s.EndMessage(ctx, true)
	if d = mail(s); !d.Refused() || !strings.Contains(d.Reply, "per-ip") {
		t.Errorf("whitelisted client's second message: %+v; want the limit to refuse it", d)
	}
	// A tagged, listed client: the blocklist refuses at MAIL FROM.
	s, _ = open("198.51.100.8")
	if d = mail(s); !d.Refused() || !strings.Contains(d.Reply, "zen.example") {
		t.Errorf("tagged, listed client: %+v; want the blocklist's refusal", d)
	}
}
