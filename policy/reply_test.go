package policy

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// postfixAccepts judges a rendered milter reply as Postfix 3.7's milter8.c
// does (SMFIR_REPLYCODE), and as an SMTP client reads a reply line: an
// error means Postfix would answer "451 4.3.5" instead, or the client
// would see a broken reply. It also checks the '%' escaping: Postfix turns
// "%%" into "%" and eats a lone '%'.
func postfixAccepts(reply string) error {
	if len(reply) < 5 {
		return fmt.Errorf("too short")
	}
	if (reply[0] != '4' && reply[0] != '5') || !isDigit(reply[1]) || !isDigit(reply[2]) || (reply[3] != ' ' && reply[3] != '-') {
		return fmt.Errorf("malformed code")
	}
	if isDigit(reply[4]) && reply[4] != reply[0] {
		return fmt.Errorf("enhanced status class %c does not match code class %c", reply[4], reply[0])
	}
	if len(reply) > 512-2 {
		return fmt.Errorf("longer than an SMTP reply line")
	}
	for i := 0; i < len(reply); i++ {
		if c := reply[i]; c < 0x20 || c >= 0x7f {
			return fmt.Errorf("byte %#x at %d is not printable ASCII", c, i)
		}
	}
	for i := 0; i < len(reply); i++ {
		if reply[i] == '%' {
			if i+1 >= len(reply) || reply[i+1] != '%' {
				return fmt.Errorf("lone %% at %d", i)
			}
			i++
		}
	}
	return nil
}

// unpercent is what the client sees of a reply sluice sent.
func unpercent(s string) string { return strings.ReplaceAll(s, "%%", "%") }

func TestParseReplyAccepts(t *testing.T) {
	v := &Verdict{Source: "msgs-per-sender", Key: "sender:alice@example.org", Limit: "10/1h", RetryAfter: 5*time.Minute + time.Second}
	env := &Env{ClientIP: "192.0.2.7", Sender: "alice@example.org", SASLUser: "alice", Rcpt: "bob@example.net"}
	for _, tc := range []struct{ in, want string }{
		{"451 4.7.1 Too many messages from {sender}; try again in {retry_after}",
			"451 4.7.1 Too many messages from alice@example.org; try again in 6m"},
		{"550 5.7.1 {rule} {key} {client_ip} {sasl_user} {rcpt} {limit}",
			"550 5.7.1 msgs-per-sender sender:alice@example.org 192.0.2.7 alice bob@example.net 10/1h"},
		{"451 Slow down", "451 4.7.1 Slow down"},       // enhanced code added
		{"554 no code here", "554 5.7.1 no code here"}, // class follows the code
		{"421 4.7.0 Bye", "421 4.7.0 Bye"},             // disconnect
		{"452 4.5.3 Too many recipients", "452 4.5.3 Too many recipients"},
		{"451 4.7.100 Three-digit detail", "451 4.7.100 Three-digit detail"},
		{"451 4.7.1 100% full", "451 4.7.1 100%% full"}, // '%' doubled for the MTA
		{"451 4.7.1 a } b", "451 4.7.1 a } b"},          // a lone } is text
		{"451 4.7.1 44 text", "451 4.7.1 44 text"},
	} {
		r, err := ParseReply(tc.in)
		if err != nil {
			t.Errorf("ParseReply(%q): %v", tc.in, err)
			continue
		}
		got := r.Render(v, env)
		if got != tc.want {
			t.Errorf("Render(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if err := postfixAccepts(got); err != nil {
			t.Errorf("Postfix would refuse %q: %v", got, err)
		}
	}
}

func TestParseReplyRefuses(t *testing.T) {
	for _, tc := range []struct{ in, why string }{
		{"", "start with a 4xx"},
		{"250 OK", "start with a 4xx"},
		{"351 4.7.1 x", "start with a 4xx"},
		{"45 4.7.1 x", "start with a 4xx"},
		{"4511 4.7.1 x", "start with a 4xx"},
		{"451-4.7.1 multi", "start with a 4xx"},
		{"451 5.7.1 mismatch", "does not match"},
		{"550 4.7.1 mismatch", "does not match"},
		{"451 2.0.0 mismatch", "does not match"},
		{"451 4.7 short", "malformed enhanced"},
		{"451 4.7.1x text", "malformed enhanced"},
		{"451 4.7.1000 long detail", "malformed enhanced"},
		{"451 4.7.1", "no text"},
		{"451 4.7.1    ", "no text"},
		{"451 ", "no text"},
		{"451 4.7.1 line\r\nbreak", "printable ASCII"},
		{"451 4.7.1 tab\there", "printable ASCII"},
		{"451 4.7.1 nul\x00", "printable ASCII"},
		{"451 4.7.1 caf\u00e9", "printable ASCII"},
		{"451 4.7.1 del\x7f", "printable ASCII"},
		{"451 4.7.1 {nope}", "unknown placeholder"},
		{"451 4.7.1 {sender", "unclosed placeholder"},
		{"451 4.7.1 {}", "unknown placeholder"},
		{"451 4.7.1 " + strings.Repeat("x", 480), "the limit is"},
		{"451 4.7.1 " + strings.Repeat("%", 240), "the limit is"}, // doubled, it no longer fits
	} {
		_, err := ParseReply(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("ParseReply(%q) = %v, want an error saying %q", tc.in, err, tc.why)
		}
	}
}

func TestParseReplyFor(t *testing.T) {
	for _, tc := range []struct {
		a    Action
		in   string
		want string // "" for success, else part of the error
	}{
		{ActionTempfail, "451 4.7.1 x", ""},
		{ActionTempfail, "421 4.7.0 x", ""}, // a tempfail may choose to hang up
		{ActionTempfail, "550 5.7.1 x", "needs a 4xx"},
		{ActionReject, "550 5.7.1 x", ""},
		{ActionReject, "554 5.7.1 x", ""},
		{ActionReject, "451 4.7.1 x", "needs a 5xx"},
		{ActionDisconnect, "421 4.7.0 x", ""},
		{ActionDisconnect, "451 4.7.1 x", "needs a 421"},
		{ActionDisconnect, "550 5.7.1 x", "needs a 421"},
		{ActionTag, "451 4.7.1 x", "sends no reply"},
		{ActionHold, "451 4.7.1 x", "sends no reply"},
		{ActionDelay, "451 4.7.1 x", "sends no reply"},
		{ActionTempfail, "451 5.7.1 x", "does not match"},
	} {
		_, err := ParseReplyFor(tc.a, tc.in)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("ParseReplyFor(%s, %q): %v", tc.a, tc.in, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("ParseReplyFor(%s, %q) = %v, want an error saying %q", tc.a, tc.in, err, tc.want)
		}
	}
}

// Every placeholder, filled with what a hostile client can send: the
// reply stays one well-formed line that Postfix accepts.
func TestRenderHostileValues(t *testing.T) {
	r := MustReply("451 4.7.1 {rule} {key} {client_ip} {sender} {sasl_user} {rcpt} {limit} {retry_after}")
	hostile := []string{
		"a\r\n250 OK@example.org",
		"\"quoted\\\"local\"@example.org",
		"100%@example.org",
		"%%%",
		"caf\u00e9@ex\u00e4mple.org",
		"\xff\xfe@example.org",
		"nul\x00@example.org",
		strings.Repeat("long", 300) + "@example.org",
		"{sender}",
	}
	for _, h := range hostile {
		v := &Verdict{Source: "r", Key: "sender:" + h, Limit: "1/1h", RetryAfter: time.Second}
		env := &Env{ClientIP: h, Sender: h, SASLUser: h, Rcpt: h}
		got := r.Render(v, env)
		if err := postfixAccepts(got); err != nil {
			t.Errorf("value %q: Postfix would refuse %q: %v", h, got, err)
		}
		if strings.Contains(unpercent(got), "{sender}") && h != "{sender}" {
			t.Errorf("value %q: placeholder left in %q", h, got)
		}
	}
	// '%' in a value reaches the client as '%'.
	got := r.Render(&Verdict{Source: "r"}, &Env{Sender: "100%@example.org"})
	if !strings.Contains(unpercent(got), " 100%@example.org ") {
		t.Errorf("sender with %%: %q", got)
	}
}

func TestRenderCutKeepsPercentPairs(t *testing.T) {
	r := MustReply("451 4.7.1 {sender}")
	for n := 0; n < 8; n++ {
		// Put the cut at every offset of a run of '%'.
		sender := strings.Repeat("a", 200-n) + strings.Repeat("%", 100)
		got := r.Render(&Verdict{}, &Env{Sender: sender})
		if err := postfixAccepts(got); err != nil {
			t.Errorf("n=%d: %q: %v", n, got, err)
		}
	}
	// The line limit holds with the longest values.
	r = MustReply("451 4.7.1 {sender} {rcpt} {sasl_user} {key}")
	long := strings.Repeat("%", 300)
	got := r.Render(&Verdict{Key: long}, &Env{Sender: long, Rcpt: long, SASLUser: long})
	if len(got) > maxReplyLine {
		t.Errorf("rendered %d bytes, limit %d", len(got), maxReplyLine)
	}
	if err := postfixAccepts(got); err != nil {
		t.Errorf("%q: %v", got, err)
	}
}

func TestRenderNullSenderAndMissingEnv(t *testing.T) {
	r := MustReply("451 4.7.1 from {sender} at {client_ip}; retry {retry_after}")
	if got := r.Render(&Verdict{}, &Env{ClientIP: "192.0.2.1"}); got != "451 4.7.1 from <> at 192.0.2.1; retry a moment" {
		t.Errorf("null sender: %q", got)
	}
	if got := r.Render(&Verdict{}, nil); got != "451 4.7.1 from  at ; retry a moment" {
		t.Errorf("nil env: %q", got)
	}
}

func TestFormatRetry(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "a moment"}, {-time.Second, "a moment"}, {time.Millisecond, "1s"}, {45 * time.Second, "45s"},
		{59*time.Second + time.Millisecond, "60s"}, {time.Minute, "1m"}, {61 * time.Second, "2m"},
		{59*time.Minute + time.Second, "1h"}, {time.Hour, "1h"}, {2*time.Hour + 5*time.Minute, "2h5m"},
		{2*time.Hour + 59*time.Minute + time.Second, "3h"}, {25 * time.Hour, "25h"},
	} {
		if got := FormatRetry(tc.d); got != tc.want {
			t.Errorf("FormatRetry(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestReplyUnmarshalText(t *testing.T) {
	var r Reply
	if err := r.UnmarshalText([]byte("451 4.7.1 Slow down, {sender}")); err != nil {
		t.Fatal(err)
	}
	if r.Code() != "451" || !r.Temporary() {
		t.Errorf("code %s temporary %v", r.Code(), r.Temporary())
	}
	if err := r.UnmarshalText([]byte("251 nope")); err == nil {
		t.Error("a 2xx reply was accepted")
	}
}

// FuzzReply: whatever template is accepted renders, with whatever values,
// into a reply Postfix accepts; nothing panics.
func FuzzReply(f *testing.F) {
	for _, s := range []string{
		"451 4.7.1 Too many messages from {sender}; try again in {retry_after}",
		"550 5.7.1 {rule} {key} {client_ip} {sasl_user} {rcpt} {limit}",
		"421 4.7.0 Bye",
		"451 100% full",
		"451 4.7.1 {sender",
		"451 5.7.1 x",
		"452 4.5.3 {}",
	} {
		f.Add(s, "alice@example.org", "sender:a\r\nb")
	}
	f.Fuzz(func(t *testing.T, tmpl, value, key string) {
		r, err := ParseReply(tmpl)
		if err != nil {
			if r != nil {
				t.Fatalf("error with a reply: %v", err)
			}
			return
		}
		v := &Verdict{Source: value, Key: key, Limit: value, RetryAfter: time.Duration(len(value)) * time.Second}
		env := &Env{ClientIP: value, Sender: value, SASLUser: key, Rcpt: value}
		got := r.Render(v, env)
		if err := postfixAccepts(got); err != nil {
			t.Fatalf("template %q, value %q: Postfix would refuse %q: %v", tmpl, value, got, err)
		}
		if got[:3] != tmpl[:3] {
			t.Fatalf("code changed: %q -> %q", tmpl, got)
		}
		for _, a := range []Action{ActionTempfail, ActionReject, ActionDisconnect} {
			if fr, err := ParseReplyFor(a, tmpl); err == nil && (fr.Temporary() != (a != ActionReject) || a == ActionDisconnect && fr.Code() != "421") {
				t.Fatalf("ParseReplyFor(%s, %q) accepted a reply of the wrong class", a, tmpl)
			}
		}
	})
}
