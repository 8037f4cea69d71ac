package limits

import (
	"errors"
	"strings"
	"testing"
	"time"

	"sluice/conf"
	"sluice/policy"
)

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		s        string
		bytes    bool
		n        int64
		period   time.Duration
		interval int64
	}{
		{"120/1m", false, 120, time.Minute, int64(time.Second) / 2},
		{"30/m", false, 30, time.Minute, int64(2 * time.Second)},
		{" 10 / 1h ", false, 10, time.Hour, int64(6 * time.Minute)},
		{"500/1d", false, 500, 24 * time.Hour, int64(24*time.Hour) / 500},
		{"1/1s", false, 1, time.Second, int64(time.Second)},
		{"50MB/1h", true, 50_000_000, time.Hour, int64(time.Hour) / 50_000_000},
		{"1GiB/1d", true, 1 << 30, 24 * time.Hour, int64(24*time.Hour) / (1 << 30)},
		{"10KB/1m", true, 10_000, time.Minute, int64(time.Minute) / 10_000},
		{"2 MiB/1h", true, 2 << 20, time.Hour, int64(time.Hour) / (2 << 20)},
		{"100/1h", true, 100, time.Hour, int64(time.Hour) / 100},
	} {
		w, err := parseRate(tc.s, tc.bytes)
		if err != nil {
			t.Errorf("%q: %v", tc.s, err)
			continue
		}
		if w.n != tc.n || w.period != tc.period || w.interval != tc.interval || w.burst != tc.n || w.String() != tc.s {
			t.Errorf("%q: %+v, want n=%d period=%v interval=%d", tc.s, w, tc.n, tc.period, tc.interval)
		}
	}
	for _, tc := range []struct {
		s     string
		bytes bool
		want  string
	}{
		{"120", false, "want N/period"},
		{"0/1m", false, "positive whole number"},
		{"-5/1m", false, "positive whole number"},
		{"x/1m", false, "positive whole number"},
		{"10MB/1h", false, "positive whole number"}, // units only for bytes
		{"10XB/1h", true, "KB, MB, GB"},
		{"10/1ms", false, "at least 1s"},
		{"10/fortnight", false, "period"},
		{"2000000000/1s", false, "finer than one unit per nanosecond"},
		{"9999999999GB/1d", true, "too large"},
	} {
		if _, err := parseRate(tc.s, tc.bytes); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one saying %q", tc.s, err, tc.want)
		}
	}
}

// TestRuleErrors: each mistake in a [[limit]] is refused with an error
// that names the key, so that the loader can point at the line.
func TestRuleErrors(t *testing.T) {
	base := func() Rule { return Rule{Name: "r", Count: "messages", Per: "sender", Rate: "10/1h"} }
	with := func(f func(*Rule)) Rule { r := base(); f(&r); return r }
	for _, tc := range []struct {
		name string
		rule Rule
		key  string // the key path the error names
		want string // a part of the message
	}{
		{"no name", with(func(r *Rule) { r.Name = "" }), "name", "needs a name"},
		{"bad name", with(func(r *Rule) { r.Name = "a:b" }), "name", "letters"},
		{"no count", with(func(r *Rule) { r.Count = "" }), "count", "missing"},
		{"unknown count", with(func(r *Rule) { r.Count = "mails" }), "count", "unknown count"},
		{"no rate", with(func(r *Rule) { r.Rate = nil }), "rate", "missing"},
		{"rate not a string", with(func(r *Rule) { r.Rate = int64(10) }), "rate", "string"},
		{"rate list of numbers", with(func(r *Rule) { r.Rate = []any{int64(1)} }), "rate", "string"},
		{"empty rate list", with(func(r *Rule) { r.Rate = []any{} }), "rate", "empty"},
		{"bad rate", with(func(r *Rule) { r.Rate = "10 per hour" }), "rate", "N/period"},
		{"too many windows", with(func(r *Rule) {
			r.Rate = []any{"1/1s", "2/2s", "3/3s", "4/4s", "5/5s", "6/6s", "7/7s", "8/8s", "9/9s", "10/10s", "11/11s"}
		}), "rate", "at most 10"},
		{"negative burst", with(func(r *Rule) { r.Burst = -1 }), "burst", "negative"},
		{"burst with windows", with(func(r *Rule) { r.Rate = []any{"1/1m", "10/1h"}; r.Burst = 5 }), "burst", "several windows"},
		{"burst overflows", with(func(r *Rule) { r.Rate = "1/1d"; r.Burst = 1 << 60 }), "burst", "overflows"},
		{"max on a rate", with(func(r *Rule) { r.Max = 3 }), "max", "concurrent"},
		{"concurrent with rate", with(func(r *Rule) { r.Count = "concurrent"; r.Per = "client_ip" }), "rate", "max, not rate"},
		{"concurrent without max", with(func(r *Rule) { r.Count = "concurrent"; r.Per = "client_ip"; r.Rate = nil }), "max", "max > 0"},
		{"max_rcpt negative", with(func(r *Rule) { r.Count = "recipients"; r.MaxRcptPerMessage = -1 }), "max_rcpt_per_message", "negative"},
		{"max_rcpt on messages", with(func(r *Rule) { r.MaxRcptPerMessage = 5 }), "max_rcpt_per_message", "recipients"},
		{"no per", with(func(r *Rule) { r.Per = nil }), "per", "missing"},
		{"per not a string", with(func(r *Rule) { r.Per = int64(1) }), "per", "key name"},
		{"per empty list", with(func(r *Rule) { r.Per = []any{} }), "per", "empty"},
		{"unknown per", with(func(r *Rule) { r.Per = "ip" }), "per", "unknown key"},
		{"per twice", with(func(r *Rule) { r.Per = []any{"sender", "sender"} }), "per", "twice"},
		{"rcpt at MAIL", with(func(r *Rule) { r.Per = "rcpt" }), "per", "not known"},
		{"sender at connect", with(func(r *Rule) { r.Count = "connections" }), "per", "not known"},
		{"bytes per rcpt_domain", with(func(r *Rule) { r.Count = "bytes"; r.Per = "rcpt_domain" }), "per", "not known"},
		{"ipv4_prefix range", with(func(r *Rule) { r.Per = "client_ip"; r.IPv4Prefix = 33 }), "ipv4_prefix", "1..32"},
		{"ipv6_prefix range", with(func(r *Rule) { r.Per = "client_ip"; r.IPv6Prefix = 129 }), "ipv6_prefix", "1..128"},
		{"ipv6_prefix without client_ip", with(func(r *Rule) { r.IPv6Prefix = 48 }), "ipv6_prefix", "client_ip"},
		{"ipv4_prefix without client_ip", with(func(r *Rule) { r.IPv4Prefix = 24 }), "ipv4_prefix", "client_ip"},
		{"strip_extension without an address", with(func(r *Rule) { r.Per = "sender_domain"; r.StripExtension = true }), "strip_extension", "sender or rcpt"},
		{"unknown null_sender", with(func(r *Rule) { r.NullSender = "drop" }), "null_sender", "skip or count"},
		{"null_sender per client_ip", with(func(r *Rule) { r.Per = "client_ip"; r.NullSender = "skip" }), "null_sender", "sender or sender_domain"},
		{"action none", with(func(r *Rule) { r.Action = policy.MustAction("none") }), "action", "dry-run"},
		{"reply for another action", with(func(r *Rule) { r.Reply = policy.MustReply("550 5.7.1 no") }), "reply", "tempfail needs a 4xx"},
		{"reply for an action that sends none", with(func(r *Rule) {
			r.Action, r.Reply = policy.MustAction("tag"), policy.MustReply("451 4.7.1 later")
		}), "reply", "sends no reply"},
		{"disconnect needs 421", with(func(r *Rule) {
			r.Action, r.Reply = policy.MustAction("disconnect"), policy.MustReply("451 4.7.1 later")
		}), "reply", "421"},
		{"delay without delay", with(func(r *Rule) { r.Action = policy.MustAction("delay") }), "delay", "delay ="},
		{"delay on tempfail", with(func(r *Rule) { r.Delay = conf.Duration(time.Second) }), "delay", "only for"},
		{"unknown count_on", with(func(r *Rule) { r.CountOn = "end" }), "count_on", "attempt or accepted"},
		{"count_on accepted for bytes", with(func(r *Rule) { r.Count = "bytes"; r.CountOn = "accepted" }), "count_on", "messages and recipients"},
		{"count_on accepted for connections", with(func(r *Rule) { r.Count = "connections"; r.Per = "client_ip"; r.CountOn = "accepted" }), "count_on", "messages and recipients"},
		{"bad except", with(func(r *Rule) { r.Except = []string{"10.0.0.0/33"} }), "except", "network"},
		{"unknown on_store_error", with(func(r *Rule) { r.OnStoreError = "ignore" }), "on_store_error", "allow, tempfail or local"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.rule
			_, err := compileRule(&r, nil, nil)
			var ce *conf.Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %v, want a conf.Error", err)
			}
			if got := strings.Join(ce.Path, "."); got != tc.key || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q at %q, want one at %q saying %q", err, got, tc.key, tc.want)
			}
		})
	}
}

// TestRulesAccepted: the forms the docs show compile, and keep what
// they say.
func TestRulesAccepted(t *testing.T) {
	for _, r := range []Rule{
		{Name: "conn-per-ip", Count: "concurrent", Per: "client_ip", Max: 20},
		{Name: "connections", Count: "connections", Per: "client_ip", Rate: "60/1m", IPv4Prefix: 24, IPv6Prefix: 48},
		{Name: "msgs", Count: "messages", Per: "sender", Rate: []any{"30/1m", "500/1d"}, StripExtension: true, NullSender: "count", CountOn: "accepted", Strict: true},
		{Name: "rcpts-user-dom", Count: "recipients", Per: []any{"sasl_user", "rcpt_domain"}, Rate: "100/1h", Burst: 20},
		{Name: "cap", MaxRcptPerMessage: 50},
		{Name: "cap-and-rate", Count: "recipients", Per: "rcpt", Rate: "10/1m", MaxRcptPerMessage: 50, StripExtension: true},
		{Name: "bytes", Count: "bytes", Per: "sender_domain", Rate: "50MB/1h", NullSender: "skip"},
		{Name: "helo", Count: "messages", Per: []any{"helo", "listener"}, Rate: "5/1m", Action: policy.MustAction("delay"), Delay: conf.Duration(2 * time.Second)},
		{Name: "tagged", Count: "messages", Per: "client_ip", Rate: "5/1m", Action: policy.MustAction("tag")},
		{Name: "held", Count: "messages", Per: "client_ip", Rate: "5/1m", Action: policy.MustAction("hold"), Mode: policy.MustMode("dry-run")},
		{Name: "rejected", Count: "messages", Per: "client_ip", Rate: "5/1m", Action: policy.MustAction("reject"), Reply: policy.MustReply("550 5.7.1 Go away {client_ip}")},
	} {
		c, err := compileRule(&r, nil, nil)
		if err != nil {
			t.Errorf("%s: %v", r.Name, err)
			continue
		}
		switch r.Name {
		case "msgs":
			if len(c.windows) != 2 || c.windows[1].burst != 500 || !c.keyer.countNull || !c.accepted || !c.strict || c.limit != "30/1m,500/1d" {
				t.Errorf("msgs: %+v", c)
			}
		case "rcpts-user-dom":
			if c.windows[0].burst != 20 || len(c.keyer.dims) != 2 {
				t.Errorf("burst %d, dims %v", c.windows[0].burst, c.keyer.dims)
			}
		case "cap":
			if c.count != countRecipients || c.maxRcpt != 50 || len(c.windows) != 0 || c.limit != "50 recipients a message" {
				t.Errorf("cap: %+v", c)
			}
		case "conn-per-ip":
			if c.max != 20 || c.limit != "20 at once" {
				t.Errorf("conn-per-ip: %+v", c)
			}
		}
	}
}

func TestConfigValidate(t *testing.T) {
	c := Config{Rules: []Rule{
		{Name: "a", Count: "messages", Per: "sender", Rate: "1/1m"},
		{Name: "a", Count: "messages", Per: "client_ip", Rate: "1/1m"},
	}}
	c.Defaults()
	err := c.Validate(nil)
	var ce *conf.Error
	if !errors.As(err, &ce) || strings.Join(ce.Path, ".") != "limit.1.name" || !strings.Contains(err.Error(), "twice") {
		t.Errorf("duplicate name: %v", err)
	}
	c.Rules[1].Name = "b"
	c.Rules[1].Rate = "1/1ms"
	if err := c.Validate(nil); !errors.As(err, &ce) || strings.Join(ce.Path, ".") != "limit.1.rate" {
		t.Errorf("bad rate in the 2nd rule: %v", err)
	}
	c.Rules[1].Rate = "1/1m"
	c.Trusted = []string{"not a network"}
	if err := c.Validate(nil); !errors.As(err, &ce) || ce.Path[0] != "trusted" {
		t.Errorf("bad trusted: %v", err)
	}
	c.Trusted = nil
	c.Defaults()
	if err := c.Validate(nil); err != nil {
		t.Errorf("valid config: %v", err)
	}
	if len(c.Trusted) != 2 {
		t.Errorf("default trusted %v", c.Trusted)
	}
}
