package e2e

// Alerts through real Postfix: a TLS webhook server in the test gets one
// signed POST per (rule, key, event) within every; a webhook that never
// answers and one that answers 500 delay no SMTP reply, and the second
// is retried; a mail alert goes through Postfix's own sendmail to the
// sink, well-formed, with the release command, whatever the client wrote
// in its HELO and sender.

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"mime/quotedprintable"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"sluice/alert"
	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

type hookServer struct {
	mu     sync.Mutex
	bodies []map[string]any
	bad    []string
}

func (h *hookServer) handle(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	if got := r.Header.Get(alert.SignatureHeader); got != alert.Sign([]byte("e2e-secret"), b) {
		h.bad = append(h.bad, "bad signature "+got)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		h.bad = append(h.bad, fmt.Sprintf("body does not parse: %v: %q", err, b))
	}
	h.bodies = append(h.bodies, m)
}

func (h *hookServer) events() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, m := range h.bodies {
		out = append(out, fmt.Sprint(m["event"]))
	}
	return out
}

func TestOutboundAlertsPostfix(t *testing.T) {
	testenv.Require(t)
	hooks := &hookServer{}
	srv := httptest.NewTLSServer(http.HandlerFunc(hooks.handle))
	defer srv.Close()
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	defer hang.Close()
	defer close(release)
	var fails atomic.Int32
	fail := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fails.Add(1)
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer fail.Close()

	sl := sluicetest.NewSluice(t)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	ca := filepath.Join(sl.Dir, "hooks-ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen, SASLUsers: saslUsers("alice@example.test")})
	// Postfix's own sendmail, for this Postfix's configuration.
	wrapper := filepath.Join(sl.Dir, "sendmail")
	script := fmt.Sprintf("#!/bin/sh\nexec /usr/sbin/sendmail -C %s \"$@\"\n", filepath.Join(pf.Dir, "etc"))
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	sl.Start(limitsConfig(fmt.Sprintf(`[[limit]]
name = "rcpts"
count = "recipients"
per = "sasl_user"
rate = "2/1h"
restrict_for = "today"

[[alert]]
webhook = %q
secret = "e2e-secret"
ca_file = %q
every = "1h"

[[alert]]
webhook = %q
timeout = "50s"

[[alert]]
webhook = %q

[[alert]]
on = ["restrict"]
mail = "postmaster@example.test"
notify_sender = true
local_domains = ["example.test"]
sendmail_path = %q

[metrics]
listen = %q
`, srv.URL, ca, hang.URL, fail.URL, wrapper, metricsAddr)))

	// A client with a hostile HELO and sender. Postfix's milter timeout is
	// 30s: had an alert to the webhook that never answers (50s) held a
	// reply, Postfix would answer its own 451 4.7.1 "Service unavailable"
	// instead of sluice's.
	c, err := mta.Dial(pf.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r, err := c.XClient("ADDR=192.0.2.90 NAME=[UNAVAILABLE]")
	mustOK(t, "XCLIENT", r, err)
	r, err = c.Ehlo(`evil"<helo>'x`)
	mustOK(t, "EHLO", r, err)
	if r, err = c.AuthPlain("alice@example.test", "pw-alice@example.test"); err != nil || r.Code != 235 {
		t.Fatalf("AUTH: %v %v", r, err)
	}
	sender := `"a\"b<c>"@example.test`
	var replies []string
	for i := range 4 {
		tr, err := c.Send(sender, rcpts(3, fmt.Sprintf("d%d.example", i)), mta.NewMessage("alice@example.test", "x@example.org", "alerts"))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("message %d: %v", i+1, tr)
		replies = append(replies, tr.String())
	}
	c.Quit()
	all := strings.Join(replies, "\n")
	if !strings.Contains(replies[0], "RCPT: 451 4.7.1 Rate limit rcpts exceeded for sasl_user:alice@example.test") ||
		strings.Contains(all, "Service unavailable") || strings.Contains(all, "4.3.5") {
		t.Errorf("the replies are not all sluice's own:\n%s", all)
	}

	// The webhook: restrict, refuse and hold, once each within the hour,
	// signed, parsing, with the fields.
	if err := pollFor(30*time.Second, func() bool { return len(hooks.events()) >= 3 }); err != nil {
		t.Fatalf("webhook got %v: %v", hooks.events(), err)
	}
	time.Sleep(2 * time.Second) // room for any duplicate to arrive
	hooks.mu.Lock()
	got, bad := append([]map[string]any(nil), hooks.bodies...), hooks.bad
	hooks.mu.Unlock()
	if len(bad) > 0 {
		t.Errorf("webhook problems: %v", bad)
	}
	kinds := map[string]int{}
	for _, m := range got {
		kinds[fmt.Sprint(m["event"])]++
		for _, k := range []string{"time", "host", "rule", "key", "action", "mode", "limit", "client_ip", "sender", "sasl_user", "helo"} {
			if _, ok := m[k]; !ok {
				t.Errorf("%s alert lacks %s: %v", m["event"], k, m)
			}
		}
		if m["helo"] != `evil"<helo>'x` || m["sender"] != sender || m["client_ip"] != "192.0.2.90" || m["key"] != "sasl_user:alice@example.test" {
			t.Errorf("alert values: %v", m)
		}
	}
	if kinds["restrict"] != 1 || kinds["refuse"] != 1 || kinds["hold"] != 1 || len(got) != 3 {
		t.Errorf("webhook events %v, want one restrict, one refuse, one hold", hooks.events())
	}
	for _, m := range got {
		if m["event"] == "restrict" && (m["restricted"] != true || m["restricted_until"] == nil ||
			!strings.Contains(fmt.Sprint(m["release"]), "sluice counters release 'sasl_user:alice@example.test' -rule 'rcpts'")) {
			t.Errorf("restrict alert %v", m)
		}
	}
	// The 500 webhook is tried again.
	if err := pollFor(30*time.Second, func() bool { return fails.Load() >= 4 }); err != nil {
		t.Errorf("the failing webhook was asked %d times: %v", fails.Load(), err)
	}

	// The mail alert, through Postfix to the sink, to postmaster and to
	// alice (a local account).
	msgs := pf.WaitDelivered(2, time.Minute) // alice's first message, and the alert
	var alertMsg *mta.Message
	for i := range msgs {
		if strings.Contains(msgs[i].Header.Get("Subject"), "[sluice] restricted") {
			alertMsg = &msgs[i]
		}
	}
	if alertMsg == nil {
		t.Fatalf("no alert mail among %d messages", len(msgs))
	}
	raw, err := os.ReadFile(alertMsg.Path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mail.ReadMessage(bytes.NewReader(raw)); err != nil {
		t.Fatalf("the alert mail does not parse: %v", err)
	}
	if rc := alertMsg.Envelope["X-Rcpt-Args"]; len(rc) != 2 {
		t.Errorf("alert mail recipients %v, want postmaster and alice", rc)
	}
	h := alertMsg.Header
	if h.Get("From") != "sluice <postmaster@example.test>" || h.Get("Auto-Submitted") != "auto-generated" || h.Get("To") != "postmaster@example.test" ||
		h.Get("Cc") != "alice@example.test" || h.Get("Content-Transfer-Encoding") != "quoted-printable" {
		t.Errorf("alert header: %v", h)
	}
	body, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(alertMsg.Body)))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"sluice restricted sasl_user:alice@example.test", "sluice counters release 'sasl_user:alice@example.test' -rule 'rcpts'",
		`HELO:          evil"<helo>'x`, "last recipient domains: d0.example"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("alert text lacks %q:\n%s", want, body)
		}
	}
	if held := heldIDs(pf); len(held) != 3 {
		t.Errorf("hold queue %v, want alice's 3 messages after the restriction", held)
	}
	mm := scrape(t, metricsAddr)
	if v := mm.value("sluice_alerts_total", "target=webhook", "result=sent"); v != 3 {
		t.Errorf("sluice_alerts_total{webhook,sent} = %v, want 3", v)
	}
	if v := mm.value("sluice_alerts_total", "target=webhook", "result=retried"); v < 3 {
		t.Errorf("sluice_alerts_total{webhook,retried} = %v, want the failing webhook's retries", v)
	}
	if v := mm.value("sluice_alerts_total", "target=mail", "result=sent"); v != 1 {
		t.Errorf("sluice_alerts_total{mail,sent} = %v, want 1", v)
	}
	if v := mm.value("sluice_restricted_keys", "rule=rcpts"); v != 1 {
		t.Errorf("sluice_restricted_keys{rule=rcpts} = %v, want 1", v)
	}
}
