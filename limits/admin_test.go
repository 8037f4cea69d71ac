package limits

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"sluice/limits/memstore"
	"sluice/policy"
)

func adminEngine(t *testing.T) (*Engine, *memstore.Store) {
	t.Helper()
	st, err := memstore.New(memstore.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg := &Config{Trusted: []string{}, Rules: []Rule{
		{Name: "per-sender", Count: "messages", Per: "sender", Rate: []any{"3/1h", "10/1d"}},
		{Name: "per-sender-plus", Count: "messages", Per: "sender", Rate: "5/1h", StripExtension: true},
		{Name: "per-ip", Count: "messages", Per: "client_ip", Rate: "4/1h", IPv4Prefix: 24},
		{Name: "conns", Count: "concurrent", Per: "client_ip", Max: 2},
		{Name: "user-dest", Count: "recipients", Per: []any{"sasl_user", "rcpt_domain"}, Rate: "6/1m"},
	}}
	cfg.Defaults()
	if err := cfg.Validate(nil); err != nil {
		t.Fatal(err)
	}
	e, err := New(cfg, nil, Options{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	return e, st
}

// send counts one message from sender at ip; it reports whether it was refused.
func send(t *testing.T, e *Engine, ip, sender string) bool {
	t.Helper()
	ctx := context.Background()
	s := e.NewSession()
	f := policy.Facts{ClientIP: netip.MustParseAddr(ip), Sender: sender}
	vs, err := e.Check(ctx, policy.StageMail, &f, s)
	if err != nil {
		t.Fatal(err)
	}
	e.Settle(ctx, s, vs != nil)
	return vs != nil
}

func TestAdminShowResetTop(t *testing.T) {
	e, _ := adminEngine(t)
	ctx := context.Background()
	for range 4 {
		send(t, e, "192.0.2.7", "Alice+news@Example.org")
	}
	cs, err := e.Show(ctx, "sender:alice+news@example.org", "")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, c := range cs {
		got[c.StoreKey] = c.Count
		if c.StoreKey == "per-sender:0:sender:alice+news@example.org" && c.RetryAfter <= 0 {
			t.Errorf("%s is full but has no retry-after", c.StoreKey)
		}
	}
	want := map[string]int64{
		"per-sender:0:sender:alice+news@example.org": 3, // the 4th was refused and not counted
		"per-sender:1:sender:alice+news@example.org": 3,
		"per-sender-plus:0:sender:alice@example.org": 3,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("show gave %v, want %v", got, want)
	}

	// The IP rule aggregates /24: any address of it, or the network, names it.
	cs, err = e.Show(ctx, "client_ip:192.0.2.99", "per-ip")
	if err != nil || len(cs) != 1 || cs[0].Key != "client_ip:192.0.2.0/24" || cs[0].Count != 3 {
		t.Fatalf("show client_ip: %+v, %v", cs, err)
	}

	top, err := e.Top(ctx, "", 20)
	if err != nil {
		t.Fatal(err)
	}
	if len(top) == 0 || top[0].Rule != "per-sender" || top[0].Limit != "3/1h" || top[0].Count != 3 || top[0].Max != 3 {
		t.Fatalf("top: %+v", top)
	}
	top, _ = e.Top(ctx, "per-ip", 20)
	if len(top) != 1 || top[0].Key != "client_ip:192.0.2.0/24" {
		t.Fatalf("top -rule per-ip: %+v", top)
	}

	if _, err := e.Reset(ctx, "sender:alice+news@example.org", "per-sender"); err != nil {
		t.Fatal(err)
	}
	cs, _ = e.Show(ctx, "sender:alice+news@example.org", "")
	for _, c := range cs {
		wantN := int64(0)
		if c.Rule == "per-sender-plus" {
			wantN = 3 // -rule limits the reset
		}
		if c.Count != wantN {
			t.Errorf("after reset -rule per-sender: %s = %d, want %d", c.StoreKey, c.Count, wantN)
		}
	}
	if send(t, e, "198.51.100.1", "alice+news@example.org") {
		t.Error("sender refused after its counter was reset")
	}
}

func TestAdminAllow(t *testing.T) {
	e, _ := adminEngine(t)
	ctx := context.Background()
	for range 3 {
		send(t, e, "192.0.2.7", "bob@example.org")
	}
	if !send(t, e, "203.0.113.1", "bob@example.org") {
		t.Fatal("4th message of 3/1h not refused")
	}
	keys, err := e.Allow(ctx, "sender:Bob@Example.org", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(keys, " ") != "sender:bob@example.org" {
		t.Errorf("exempted %v", keys)
	}
	for i := range 5 {
		if send(t, e, fmt.Sprintf("198.51.%d.1", i), "bob@example.org") {
			t.Fatalf("exempt sender refused at message %d", i+1)
		}
	}
	ex, _ := e.Exemptions(ctx)
	if _, ok := ex["sender:bob@example.org"]; !ok {
		t.Errorf("exemptions: %v", ex)
	}
	if _, err := e.Allow(ctx, "sender:bob@example.org", time.Time{}); err != nil {
		t.Fatal(err)
	}
	if !send(t, e, "203.0.113.3", "bob@example.org") {
		t.Error("sender not refused once the exemption was lifted")
	}
}

func TestAdminKeyErrors(t *testing.T) {
	e, _ := adminEngine(t)
	ctx := context.Background()
	for key, want := range map[string]string{
		"":                      "empty key",
		"alice@example.org":     "want name:value",
		"from:alice":            "unknown key",
		"client_ip:not-an-ip":   "not an address",
		"helo:mx.example.org":   "no rule counts per helo (the rules count per: sender, client_ip, sasl_user+rcpt_domain)",
		"sender:":               "has no value",
		"sender:a@b,sender:c":   "given twice",
		"sasl_user:bob":         "no rule counts per sasl_user",
		"rcpt_domain:gmail.com": "no rule counts per rcpt_domain",
	} {
		_, err := e.Show(ctx, key, "")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("show %q: %v, want an error with %q", key, err, want)
		}
	}
	if _, err := e.Show(ctx, "sender:a@b", "nope"); err == nil || !strings.Contains(err.Error(), `no rule named "nope"`) {
		t.Errorf("unknown rule: %v", err)
	}
	if _, err := e.Show(ctx, "helo:x", ""); !errors.Is(err, ErrNoRule) {
		t.Errorf("want ErrNoRule, got %v", err)
	}
	// Both dimensions, in either order, name the two-dimension rule.
	for _, key := range []string{"sasl_user:Bob,rcpt_domain:Gmail.com", "rcpt_domain:gmail.com,sasl_user:bob"} {
		cs, err := e.Show(ctx, key, "")
		if err != nil || len(cs) != 1 || cs[0].Key != "sasl_user:bob,rcpt_domain:gmail.com" {
			t.Errorf("show %q: %+v %v", key, cs, err)
		}
	}
}
