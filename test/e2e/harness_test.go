package e2e

// These tests prove the harness itself with a do-nothing milter written
// here, so that a failure in the sluice cases points at sluice, not at
// the way the MTAs were set up.

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/d--j/go-milter"

	"sluice/limits/redisstore/redistest"
	"sluice/test/mta"
	"sluice/test/testenv"
)

// recorder is a do-nothing milter that remembers what the MTA told it and
// stamps each message with an X-Test-Milter header at end of message. It
// asks for no macros of its own: the MTA sends what its config says.
type recorder struct {
	mu       sync.Mutex
	conns    int               // milter connections accepted
	connects []string          // client addresses seen at Connect
	macros   map[string]string // "stage name" -> the last value seen
	mails    []string
}

// macroStages names the stages of the macro packets recorded: a macro's
// value can differ by stage (Postfix evaluates end-of-message macros in
// cleanup, which does not see smtpd's -o overrides).
var macroStages = map[byte]string{'C': "connect", 'H': "helo", 'M': "mail", 'R': "rcpt", 'N': "eoh", 'E': "eom"}

// note records a macro packet as the MTA sent it: "stage name" -> value.
func (r *recorder) note(data []byte) {
	if len(data) == 0 {
		return
	}
	stage, ok := macroStages[data[0]]
	if !ok {
		return
	}
	kv := strings.Split(strings.TrimSuffix(string(data[1:]), "\x00"), "\x00")
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := 0; i+1 < len(kv); i += 2 {
		r.macros[stage+" "+kv[i]] = kv[i+1]
	}
}

type recorderSession struct {
	milter.NoOpMilter
	r *recorder
}

func (s recorderSession) Connect(host, family string, port uint16, addr string, m milter.Modifier) (*milter.Response, error) {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	s.r.connects = append(s.r.connects, addr)
	return milter.RespContinue, nil
}

func (s recorderSession) MailFrom(from, esmtpArgs string, m milter.Modifier) (*milter.Response, error) {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	s.r.mails = append(s.r.mails, from)
	return milter.RespContinue, nil
}

// RcptTo, Header and BodyChunk continue, where NoOpMilter would ask the
// MTA to skip the rest of them.
func (s recorderSession) RcptTo(rcptTo, esmtpArgs string, m milter.Modifier) (*milter.Response, error) {
	return milter.RespContinue, nil
}

func (s recorderSession) Header(name, value string, m milter.Modifier) (*milter.Response, error) {
	return milter.RespContinue, nil
}

func (s recorderSession) BodyChunk(chunk []byte, m milter.Modifier) (*milter.Response, error) {
	return milter.RespContinue, nil
}

func (s recorderSession) EndOfMessage(m milter.Modifier) (*milter.Response, error) {
	if err := m.AddHeader("X-Test-Milter", "seen; queue_id="+m.Get("i")); err != nil {
		return nil, err
	}
	return milter.RespAccept, nil
}

// countingListener counts the milter connections the MTA opens, and
// hands the milter connections that show the recorder each macro packet.
type countingListener struct {
	net.Listener
	r *recorder
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.r.mu.Lock()
		l.r.conns++
		l.r.mu.Unlock()
		c = &sniffConn{Conn: c, r: l.r}
	}
	return c, err
}

// sniffConn follows the packets the MTA sends and shows the recorder the
// macro packets.
type sniffConn struct {
	net.Conn
	r   *recorder
	buf []byte
}

func (c *sniffConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.buf = append(c.buf, p[:n]...)
	for len(c.buf) >= 4 {
		size := 4 + int(binary.BigEndian.Uint32(c.buf))
		if size == 4 || len(c.buf) < size {
			break
		}
		if c.buf[4] == 'D' {
			c.r.note(c.buf[5:size])
		}
		c.buf = c.buf[size:]
	}
	return n, err
}

// startRecorder serves the do-nothing milter on spec (Postfix syntax).
func startRecorder(t *testing.T, spec string) *recorder {
	t.Helper()
	network, addr, err := testenv.SplitSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{macros: map[string]string{}}
	srv := milter.NewServer(
		milter.WithMilter(func() milter.Milter { return recorderSession{r: r} }),
		milter.WithActions(milter.OptAddHeader),
		milter.WithProtocols(milter.OptNoUnknown|milter.OptNoData),
	)
	go srv.Serve(countingListener{ln, r})
	t.Cleanup(func() { srv.Close() })
	return r
}

func (r *recorder) snapshot() (conns int, connects []string, macros map[string]string, mails []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := map[string]string{}
	for k, v := range r.macros {
		m[k] = v
	}
	return r.conns, append([]string(nil), r.connects...), m, append([]string(nil), r.mails...)
}

func mustOK(t *testing.T, what string, r mta.Reply, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if !r.OK() {
		t.Fatalf("%s: %v", what, r)
	}
}

// TestHarnessPostfix: Postfix with a milter attached relays to the sink,
// XCLIENT changes the client the milter sees, the submission listener has
// its own {daemon_name}, SMTP AUTH reaches the milter as {auth_authen}.
func TestHarnessPostfix(t *testing.T) {
	testenv.Require(t)
	spec := fmt.Sprintf("inet:127.0.0.1:%d", testenv.FreePort(t))
	rec := startRecorder(t, spec)
	pf := mta.StartPostfix(t, mta.PostfixOptions{
		Milter:     spec,
		Submission: true,
		SASLUsers:  map[string]string{"alice@example.test": "secret"},
	})

	c, err := mta.Dial(pf.Addr)
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.XClient("ADDR=192.0.2.10 NAME=client.example.net")
	mustOK(t, "XCLIENT", r, err)
	r, err = c.Ehlo("client.example.net")
	mustOK(t, "EHLO", r, err)
	for i := 1; i <= 3; i++ {
		tr, err := c.Send("sender@example.test", []string{"rcpt@example.org"},
			mta.NewMessage("sender@example.test", "rcpt@example.org", fmt.Sprintf("harness %d", i)))
		if err != nil || !tr.Accepted() {
			t.Fatalf("message %d: %v %v", i, tr, err)
		}
	}
	c.Quit()
	_, _, macros, _ := rec.snapshot()
	for _, k := range []string{"connect {client_addr}", "mail {client_addr}"} {
		if macros[k] != "192.0.2.10" {
			t.Errorf("milter saw %s %q, want the XCLIENT address 192.0.2.10", k, macros[k])
		}
	}
	for _, k := range []string{"connect {daemon_name}", "mail {daemon_name}"} {
		if macros[k] != "smtpd" {
			t.Errorf("milter saw %s %q on the smtpd listener, want smtpd", k, macros[k])
		}
	}
	// Postfix evaluates end-of-message macros in cleanup, which does not
	// see master.cf's -o overrides: there {daemon_name} is main.cf's.
	if macros["eom {daemon_name}"] != "mx.example.test" {
		t.Errorf("milter saw eom {daemon_name} %q, want mx.example.test (main.cf's value)", macros["eom {daemon_name}"])
	}

	sub, err := mta.Dial(pf.SubmissionAddr)
	if err != nil {
		t.Fatal(err)
	}
	r, err = sub.Ehlo("client.example.net")
	mustOK(t, "EHLO", r, err)
	if !strings.Contains(r.Text, "AUTH") {
		t.Fatalf("EHLO offers no AUTH: %v", r)
	}
	r, err = sub.AuthPlain("alice@example.test", "wrong")
	if err != nil || r.Code != 535 {
		t.Fatalf("AUTH with a wrong password: got %v %v, want 535", r, err)
	}
	r, err = sub.AuthPlain("alice@example.test", "secret")
	if err != nil || r.Code != 235 {
		t.Fatalf("AUTH: %v %v", r, err)
	}
	tr, err := sub.Send("alice@example.test", []string{"rcpt@example.org"},
		mta.NewMessage("alice@example.test", "rcpt@example.org", "harness submission"))
	if err != nil || !tr.Accepted() {
		t.Fatalf("submission: %v %v", tr, err)
	}
	sub.Quit()
	conns, connects, macros, mails := rec.snapshot()
	for _, k := range []string{"connect {daemon_name}", "mail {daemon_name}"} {
		if macros[k] != "submission" {
			t.Errorf("milter saw %s %q on the submission listener, want submission", k, macros[k])
		}
	}
	for _, k := range []string{"mail {auth_authen}", "rcpt {auth_authen}", "eom {auth_authen}"} {
		if macros[k] != "alice@example.test" {
			t.Errorf("milter saw %s %q, want alice@example.test", k, macros[k])
		}
	}
	// XCLIENT makes Postfix close the milter connection and open a new one
	// for the new client: 3 milter connections for 2 SMTP sessions.
	if conns, connects, _, _ := rec.snapshot(); conns != 3 || len(connects) != 3 {
		t.Errorf("milter connections %d, connect events %v: want 3 and 3 (XCLIENT reconnects)", conns, connects)
	}

	msgs := pf.WaitDelivered(4, 30*time.Second)
	if len(msgs) != 4 {
		t.Fatalf("sink has %d messages, want 4", len(msgs))
	}
	for _, m := range msgs {
		if !strings.HasPrefix(m.Header.Get("X-Test-Milter"), "seen; queue_id=") {
			t.Errorf("%s: no header from the milter: %v", m.Path, m.Header)
		}
	}
	if got := len(mta.FromSender(msgs, "sender@example.test")); got != 3 {
		t.Errorf("sink has %d messages from sender@example.test, want 3", got)
	}
	if q := pf.Queue(); len(q) != 0 {
		t.Errorf("queue not empty: %+v", q)
	}
	t.Logf("milter connections %d, connect events %v, MAIL FROMs %v", conns, connects, mails)
}

// TestHarnessPostfixMilterDown: with the milter unreachable, Postfix
// applies milter_default_action as configured.
func TestHarnessPostfixMilterDown(t *testing.T) {
	testenv.Require(t)
	down := fmt.Sprintf("inet:127.0.0.1:%d", testenv.FreePort(t))
	for _, tc := range []struct {
		action   string
		wantCode int
	}{
		{"tempfail", 451},
		{"accept", 250},
	} {
		t.Run(tc.action, func(t *testing.T) {
			pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: down, DefaultAction: tc.action})
			c, err := mta.Dial(pf.Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			r, err := c.Ehlo("client.example.net")
			if err != nil {
				t.Fatal(err)
			}
			r, err = c.Mail("sender@example.test")
			if err != nil {
				t.Fatal(err)
			}
			if r.Code != tc.wantCode {
				t.Fatalf("MAIL FROM with the milter down and milter_default_action=%s: %v, want %d", tc.action, r, tc.wantCode)
			}
			t.Logf("MAIL FROM: %v", r)
		})
	}
}

// TestHarnessPostfixQueue: Queue sees a held message, Postsuper releases
// it and it is delivered.
func TestHarnessPostfixQueue(t *testing.T) {
	testenv.Require(t)
	pf := mta.StartPostfix(t, mta.PostfixOptions{
		Main: map[string]string{"smtpd_sender_restrictions": "check_sender_access inline:{held@example.test=HOLD}"},
	})
	c := session(t, pf.Addr, "192.0.2.20")
	for _, from := range []string{"held@example.test", "free@example.test"} {
		tr, err := c.Send(from, []string{rcpt}, mta.NewMessage(from, rcpt, "queue"))
		if err != nil || !tr.Accepted() {
			t.Fatalf("%s: %v %v", from, tr, err)
		}
	}
	c.Quit()
	msgs := pf.WaitDelivered(1, 30*time.Second)
	q := pf.Queue()
	if len(msgs) != 1 || msgs[0].From() != "free@example.test" {
		t.Errorf("sink: %d messages (%v), want only free@example.test's", len(msgs), msgs)
	}
	if len(q) != 1 || q[0].QueueName != "hold" || q[0].Sender != "held@example.test" {
		t.Fatalf("queue %+v: want one held message from held@example.test", q)
	}
	t.Logf("held: %s from %s to %s", q[0].QueueID, q[0].Sender, q[0].Recipients[0].Address)
	pf.Postsuper("-H", "ALL") // into the deferred queue
	pf.Flush()
	if msgs := pf.WaitDelivered(2, 30*time.Second); len(msgs) != 2 {
		t.Errorf("after release: %d messages in the sink, want 2", len(msgs))
	}
	if q := pf.Queue(); len(q) != 0 {
		t.Errorf("queue after release: %+v", q)
	}
}

// TestHarnessSendmail: Sendmail with a milter attached relays to the sink
// and gives the milter its {daemon_name} and the queue id at MAIL.
func TestHarnessSendmail(t *testing.T) {
	testenv.Require(t)
	spec := fmt.Sprintf("inet:127.0.0.1:%d", testenv.FreePort(t))
	rec := startRecorder(t, spec)
	sm := mta.StartSendmail(t, mta.SendmailOptions{Milter: spec})
	c, err := mta.Dial(sm.Addr)
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.Ehlo("client.example.net")
	mustOK(t, "EHLO", r, err)
	for i := 1; i <= 2; i++ {
		tr, err := c.Send("sender@example.test", []string{"rcpt@example.org"},
			mta.NewMessage("sender@example.test", "rcpt@example.org", fmt.Sprintf("harness %d", i)))
		if err != nil || !tr.Accepted() {
			t.Fatalf("message %d: %v %v", i, tr, err)
		}
	}
	c.Quit()
	msgs := sm.WaitDelivered(2, 60*time.Second)
	if len(msgs) != 2 {
		t.Fatalf("sink has %d messages, want 2", len(msgs))
	}
	for _, m := range msgs {
		if !strings.HasPrefix(m.Header.Get("X-Test-Milter"), "seen; queue_id=") {
			t.Errorf("%s: no header from the milter: %v", m.Path, m.Header)
		}
	}
	conns, connects, macros, mails := rec.snapshot()
	for _, k := range []string{"connect {daemon_name}", "mail {daemon_name}", "eom {daemon_name}"} {
		if macros[k] != "MTA" {
			t.Errorf("milter saw %s %q, want MTA", k, macros[k])
		}
	}
	// Sendmail sends the queue id from MAIL on (Postfix does not by default).
	if macros["mail i"] == "" || macros["eom i"] == "" {
		t.Errorf("milter saw no queue id at MAIL or end of message: %v", macros)
	}
	t.Logf("milter connections %d, connect events %v, MAIL FROMs %v", conns, connects, mails)
}

// TestHarnessSendmailMilterDown: F=T makes Sendmail tempfail when the
// milter is unreachable.
func TestHarnessSendmailMilterDown(t *testing.T) {
	testenv.Require(t)
	down := fmt.Sprintf("inet:127.0.0.1:%d", testenv.FreePort(t))
	sm := mta.StartSendmail(t, mta.SendmailOptions{Milter: down})
	c, err := mta.Dial(sm.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var first mta.Reply
	for _, step := range []func() (mta.Reply, error){
		func() (mta.Reply, error) { return c.Greeting, nil },
		func() (mta.Reply, error) { return c.Ehlo("client.example.net") },
		func() (mta.Reply, error) { return c.Mail("sender@example.test") },
	} {
		r, err := step()
		if err != nil {
			t.Fatal(err)
		}
		if !r.OK() {
			first = r
			break
		}
	}
	if first.Code != 451 || !strings.HasPrefix(first.Text, "4.3.2") {
		t.Fatalf("with the milter down and F=T: first refusal %v, want 451 4.3.2", first)
	}
	t.Logf("first refusal: %v", first)
}

// TestHarnessRedis: a throw-away Redis answers, stops and comes back
// empty (it keeps nothing on disk).
func TestHarnessRedis(t *testing.T) {
	testenv.Require(t)
	r := redistest.Start(t)
	ctx := context.Background()
	if err := r.Client().Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	r.Stop()
	if err := r.Client().Ping(ctx).Err(); err == nil {
		t.Fatal("PING answered after Stop")
	}
	r.Start()
	if n, err := r.Client().Exists(ctx, "k").Result(); err != nil || n != 0 {
		t.Fatalf("EXISTS after restart: %d %v, want 0", n, err)
	}
}
