package alert

import (
	"bytes"
	"context"
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

	"go.uber.org/zap/zaptest"

	"sluice/conf"
	"sluice/limits/memstore"
)

func init() { firstRetry, maxRetry = 10*time.Millisecond, 40*time.Millisecond }

// hostile is an event whose client-given values try to break out of a
// header, a JSON string and a shell command.
func hostile() Event {
	return Event{
		Time: time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC), Host: "mx1.example.com",
		Event: KindRestrict, Rule: "rcpts", Key: "sasl_user:alice@example.com", Action: "hold", Mode: "enforce",
		Detail: "count=21", Limit: "20/1h", Restricted: true, Until: time.Date(2030, 1, 2, 0, 0, 0, 0, time.UTC),
		ClientIP: "192.0.2.7", Helo: "evil\r\nX-Injected: 1\r\n\r\nbody",
		Sender:   "\"a\\\"b\"<x>@example.com\r\nBcc: victim@example.org\xff\xfe",
		SASLUser: "alice@example.com", QueueID: "4Q1", RcptDomains: []string{"one.example", "\"two\"\n.example"},
		Release: ReleaseCommand("rcpts", "sender:a'$(reboot)'@example.com"),
	}
}

func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 20s for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// caFile writes the test server's certificate where ca_file reads it.
func caFile(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.pem")
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func newDispatcher(t *testing.T, cfgs ...Config) *Dispatcher {
	t.Helper()
	for i := range cfgs {
		cfgs[i].Defaults()
		if err := cfgs[i].Validate(map[string]bool{"rcpts": true, "other": true}); err != nil {
			t.Fatal(err)
		}
	}
	d := New(Options{Log: zaptest.NewLogger(t)})
	if err := d.Configure(cfgs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close(context.Background()) })
	return d
}

// A webhook gets each (rule, key, event) once per every, as JSON that
// parses whatever the client wrote, signed with the secret, over TLS
// checked against ca_file.
func TestWebhookSignedOncePerEvery(t *testing.T) {
	var mu sync.Mutex
	var bodies [][]byte
	var bad []string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		if got := r.Header.Get(SignatureHeader); got != Sign([]byte("s3cret"), b) {
			bad = append(bad, "signature "+got)
		}
		if r.Header.Get("Content-Type") != "application/json" {
			bad = append(bad, "content type "+r.Header.Get("Content-Type"))
		}
		bodies = append(bodies, b)
	}))
	defer srv.Close()
	d := newDispatcher(t, Config{Webhook: srv.URL, Secret: "s3cret", CAFile: caFile(t, srv), Every: conf.Duration(time.Hour)})
	ev := hostile()
	for range 5 {
		d.Notify(ev)
	}
	hold := ev
	hold.Event = KindHold
	d.Notify(hold)
	later := ev
	later.Time = ev.Time.Add(time.Hour)
	d.Notify(later) // a new hour: alerted again
	waitFor(t, "3 alerts", func() bool { return d.Count("webhook", "sent") == 3 })
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(bodies) != 3 || len(bad) > 0 {
		t.Fatalf("%d POSTs (want 3), problems %v", len(bodies), bad)
	}
	if n := d.Count("webhook", "deduplicated"); n != 4 {
		t.Errorf("%d deduplicated, want 4", n)
	}
	var got map[string]any
	for _, b := range bodies {
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("body does not parse: %v\n%s", err, b)
		}
		if m["event"] == "restrict" && m["time"] == "2030-01-01T12:00:00Z" {
			got = m
		}
	}
	for k, want := range map[string]any{
		"event": "restrict", "rule": "rcpts", "key": "sasl_user:alice@example.com", "action": "hold", "mode": "enforce",
		"counts": "count=21", "limit": "20/1h", "restricted": true, "restricted_until": "2030-01-02T00:00:00Z",
		"client_ip": "192.0.2.7", "helo": "evil\r\nX-Injected: 1\r\n\r\nbody", "sasl_user": "alice@example.com",
		"queue_id": "4Q1", "host": "mx1.example.com", "time": "2030-01-01T12:00:00Z",
	} {
		if got[k] != want {
			t.Errorf("%s = %#v, want %#v", k, got[k], want)
		}
	}
	if s, _ := got["sender"].(string); !strings.HasPrefix(s, "\"a\\\"b\"<x>@example.com\r\nBcc:") {
		t.Errorf("sender = %q", s)
	}
}

// Without ca_file the test server's certificate is not trusted: the
// alert fails, is retried, and fails for good.
func TestWebhookVerifiesTLS(t *testing.T) {
	var posts atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { posts.Add(1) }))
	defer srv.Close()
	d := newDispatcher(t, Config{Webhook: srv.URL})
	d.Notify(hostile())
	waitFor(t, "the alert to fail", func() bool { return d.Count("webhook", "failed") == 1 })
	if posts.Load() != 0 || d.Count("webhook", "retried") != maxAttempts-1 {
		t.Errorf("posts %d retried %d; want 0 and %d", posts.Load(), d.Count("webhook", "retried"), maxAttempts-1)
	}
}

// A webhook that answers 500 is tried again until it answers 2xx; one
// that answers 400 is not.
func TestWebhookRetries(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) <= 2 {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer srv.Close()
	d := newDispatcher(t, Config{Webhook: srv.URL})
	d.Notify(hostile())
	waitFor(t, "the alert", func() bool { return d.Count("webhook", "sent") == 1 })
	if r := d.Count("webhook", "retried"); r != 2 || n.Load() != 3 {
		t.Errorf("retried %d, posts %d; want 2 and 3", r, n.Load())
	}
	four := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusForbidden) }))
	defer four.Close()
	d2 := newDispatcher(t, Config{Webhook: four.URL})
	d2.Notify(hostile())
	waitFor(t, "the refusal", func() bool { return d2.Count("webhook", "failed") == 1 })
	if r := d2.Count("webhook", "retried"); r != 0 {
		t.Errorf("a 403 was retried %d times", r)
	}
}

// Notify never waits for a target: with a webhook that never answers,
// thousands of alerts return at once, the queue fills, and what does
// not fit is dropped and counted.
func TestNotifyNeverBlocks(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	defer srv.Close()
	defer close(release)
	d := newDispatcher(t, Config{Webhook: srv.URL, Timeout: conf.Duration(time.Minute)})
	done := make(chan struct{})
	go func() {
		defer close(done)
		ev := hostile()
		for i := range 3 * queueSize {
			ev.Key = fmt.Sprintf("sasl_user:u%d@example.com", i)
			d.Notify(ev)
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Notify blocked behind a webhook that never answers")
	}
	if dropped := d.Count("webhook", "dropped"); dropped < queueSize {
		t.Errorf("%d dropped of %d with a queue of %d", dropped, 3*queueSize, queueSize)
	}
}

// Two hosts on one store send one alert between them.
func TestDedupAcrossHosts(t *testing.T) {
	var posts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { posts.Add(1) }))
	defer srv.Close()
	st, err := memstore.New(memstore.Config{MaxKeys: 100}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var ds []*Dispatcher
	for range 2 {
		c := Config{Webhook: srv.URL}
		c.Defaults()
		d := New(Options{Store: st, Log: zaptest.NewLogger(t)})
		defer d.Close(context.Background())
		d.Configure([]Config{c})
		ds = append(ds, d)
	}
	ds[0].Notify(hostile())
	ds[1].Notify(hostile())
	waitFor(t, "both hosts to decide", func() bool {
		return ds[0].Count("webhook", "sent")+ds[1].Count("webhook", "sent") == 1 &&
			ds[0].Count("webhook", "deduplicated")+ds[1].Count("webhook", "deduplicated") == 1
	})
	if posts.Load() != 1 {
		t.Errorf("%d posts, want 1", posts.Load())
	}
}

// fakeSendmail is a sendmail that keeps its arguments and input.
func fakeSendmail(t *testing.T, exit int) (path, dir string) {
	t.Helper()
	dir = t.TempDir()
	path = filepath.Join(dir, "sendmail")
	script := fmt.Sprintf("#!/bin/sh\nprintf '%%s\\n' \"$@\" > %s/args\ncat > %s/msg\nexit %d\n", dir, dir, exit)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path, dir
}

// A mail alert is a well-formed message whose header no client value can
// add to, and goes to the account too when it is a local address; a
// hostile sender never reaches sendmail's command line.
func TestMailAlert(t *testing.T) {
	path, dir := fakeSendmail(t, 0)
	d := newDispatcher(t, Config{Mail: "postmaster@example.com", SendmailPath: path, NotifySender: true, LocalDomains: []string{"Example.com"}})
	d.Notify(hostile())
	waitFor(t, "the mail", func() bool { return d.Count("mail", "sent") == 1 })
	args, _ := os.ReadFile(filepath.Join(dir, "args"))
	if want := "-i\n-f\npostmaster@example.com\n--\npostmaster@example.com\nalice@example.com\n"; string(args) != want {
		t.Errorf("sendmail arguments:\n%s\nwant\n%s", args, want)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "msg"))
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("the alert does not parse: %v\n%s", err, raw)
	}
	var names []string
	for k := range m.Header {
		names = append(names, k)
	}
	if len(m.Header) != 10 || m.Header.Get("X-Injected") != "" || m.Header.Get("Bcc") != "" {
		t.Errorf("header fields %v", names)
	}
	if got := m.Header.Get("Subject"); got != "[sluice] restricted: sasl_user:alice@example.com (rcpts)" {
		t.Errorf("Subject %q", got)
	}
	for i, c := range raw[:bytes.Index(raw, []byte("\r\n\r\n"))] {
		if c >= 0x80 || c < 0x20 && c != '\r' && c != '\n' {
			t.Fatalf("byte %#x at %d of the header", c, i)
		}
	}
	body, err := io.ReadAll(quotedprintable.NewReader(m.Body))
	if err != nil {
		t.Fatal(err)
	}
	text := string(body)
	for _, want := range []string{
		"sluice restricted sasl_user:alice@example.com: it crossed the limit 20/1h of rule rcpts.",
		"until 2030-01-02T00:00:00Z",
		`HELO:          evil\x0d\x0aX-Injected: 1\x0d\x0a\x0d\x0abody`,
		"last recipient domains: one.example, \"two\"\\x0a.example",
		`sluice counters release 'sender:a'\''$(reboot)'\''@example.com' -rule 'rcpts'`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the text lacks %q:\n%s", want, text)
		}
	}

	// A sender that is not a plain local address is not written to.
	ev := hostile()
	ev.Key, ev.SASLUser, ev.Sender = "sender:x", "", "-oQ/tmp/x@example.com"
	d.Notify(ev)
	waitFor(t, "the second mail", func() bool { return d.Count("mail", "sent") == 2 })
	if args, _ := os.ReadFile(filepath.Join(dir, "args")); strings.Contains(string(args), "oQ") {
		t.Errorf("a hostile sender reached sendmail's arguments:\n%s", args)
	}
}

// A sendmail that fails makes the alert fail, after its retries.
func TestMailAlertFails(t *testing.T) {
	path, _ := fakeSendmail(t, 75)
	d := newDispatcher(t, Config{Mail: "postmaster@example.com", SendmailPath: path})
	d.Notify(hostile())
	waitFor(t, "the failure", func() bool { return d.Count("mail", "failed") == 1 })
}

func TestConfigErrors(t *testing.T) {
	path, _ := fakeSendmail(t, 0)
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{}, "needs a target"},
		{Config{Webhook: "https://a.example/", Mail: "p@example.com"}, "one target per [[alert]]"},
		{Config{Webhook: "http://hooks.example.com/x"}, "over https"},
		{Config{Webhook: "ftp://x/"}, "want an https URL"},
		{Config{Webhook: "https://a.example/", Rules: []string{"nope"}}, `no [[limit]] named "nope"`},
		{Config{Webhook: "https://a.example/", On: []string{"explode"}}, `unknown event "explode"`},
		{Config{Webhook: "https://a.example/", CAFile: "/nonexistent"}, "ca_file"},
		{Config{Webhook: "https://a.example/", NotifySender: true}, "only for a mail alert"},
		{Config{Mail: "Post Master <p@example.com>", SendmailPath: path}, "want a bare address"},
		{Config{Mail: "-oQ@example.com", SendmailPath: path}, "want a bare address"},
		{Config{Mail: "p@example.com", SendmailPath: "/nonexistent/sendmail"}, "sendmail_path"},
		{Config{Mail: "p@example.com", SendmailPath: path, NotifySender: true}, "local_domains"},
		{Config{Mail: "p@example.com", SendmailPath: path, Secret: "x"}, "only for a webhook"},
		{Config{Webhook: "https://a.example/", Every: conf.Duration(time.Millisecond)}, "below 1s"},
	} {
		tc.c.Defaults()
		if err := tc.c.Validate(map[string]bool{"rcpts": true}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.c, err, tc.want)
		}
	}
	ok := Config{Webhook: "http://127.0.0.1:9/x"}
	ok.Defaults()
	if err := ok.Validate(nil); err != nil {
		t.Errorf("http to loopback: %v", err)
	}
}

// A target that never answers holds no other target's alerts: each has
// its own queue and workers.
func TestHangingTargetHoldsNoOther(t *testing.T) {
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	defer hang.Close()
	defer close(release)
	var posts atomic.Int32
	good := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { posts.Add(1) }))
	defer good.Close()
	d := newDispatcher(t, Config{Webhook: hang.URL, Timeout: conf.Duration(time.Minute)}, Config{Webhook: good.URL})
	ev := hostile()
	for i := range 10 {
		ev.Key = fmt.Sprintf("sasl_user:u%d@example.com", i)
		d.Notify(ev)
	}
	waitFor(t, "the answering target's 10 alerts", func() bool { return posts.Load() == 10 })
	// A reload that keeps the answering target keeps its queue and
	// workers; one that drops the hanging target stops it.
	if err := d.Configure([]Config{{Webhook: good.URL}}); err != nil {
		t.Fatal(err)
	}
	ev.Key = "sasl_user:after-reload@example.com"
	d.Notify(ev)
	waitFor(t, "an alert after the reload", func() bool { return posts.Load() == 11 })
}
