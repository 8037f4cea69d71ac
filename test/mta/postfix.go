// Package mta starts real mail servers for end-to-end tests and benchmarks
// — Postfix, Sendmail, smtp-sink — and speaks SMTP to them.
package mta

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"sluice/test/testenv"
)

// PostfixOptions says how to set up a throw-away Postfix.
type PostfixOptions struct {
	// Milter is smtpd_milters: sluice's listen spec ("inet:127.0.0.1:PORT"
	// or "unix:/path"). Empty: no milter.
	Milter string
	// DefaultAction is milter_default_action, what Postfix does when the
	// milter is down: "tempfail" (the default here) or "accept".
	DefaultAction string
	// Submission adds a second smtpd listener whose milter {daemon_name} is
	// "submission" (the first one's is "smtpd"); it logs as
	// postfix/submission/smtpd, as Debian's master.cf has it.
	Submission bool
	// UnnamedListener leaves the port-25 listener as master.cf.dist has
	// it, without -o milter_macro_daemon_name: Postfix then sends its
	// default, $myhostname ("mx.example.test").
	UnnamedListener bool
	// SASLUsers turns SMTP AUTH on (Cyrus sasldb, PLAIN and LOGIN):
	// "user@realm" -> password.
	SASLUsers map[string]string
	// Sink receives what Postfix relays; nil starts a new one.
	Sink *Sink
	// NoMacros empties milter_*_macros: Postfix sends a milter only the
	// macros it asks for (milter protocol 6), none of its own accord.
	NoMacros bool
	// Main holds extra main.cf settings, applied last.
	Main map[string]string
}

// Postfix is a throw-away Postfix under one directory, relaying every
// message to a Sink.
type Postfix struct {
	Dir            string
	Addr           string // the smtpd listener, 127.0.0.1:PORT; {daemon_name} "smtpd" (or "mx.example.test", unnamed)
	SubmissionAddr string // with PostfixOptions.Submission; {daemon_name} "submission"
	Sink           *Sink

	t      testing.TB
	etc    string
	bin    string
	queue  string
	active bool
}

// StartPostfix sets up and starts a Postfix that relays to a sink, with
// the milter attached. It is stopped when the test ends.
func StartPostfix(t testing.TB, opts PostfixOptions) *Postfix {
	t.Helper()
	bin := testenv.Tool(t, "postfix")
	testenv.Tool(t, "postconf")
	dir := testenv.Dir(t, "postfix")
	p := &Postfix{
		Dir:   dir,
		Addr:  fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		Sink:  opts.Sink,
		t:     t,
		etc:   filepath.Join(dir, "etc"),
		bin:   bin,
		queue: filepath.Join(dir, "queue"),
	}
	if p.Sink == nil {
		p.Sink = StartSink(t)
	}
	if opts.Submission {
		p.SubmissionAddr = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	}
	for _, d := range []string{p.etc, p.queue, filepath.Join(dir, "data")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := chownPostfix(filepath.Join(dir, "data")); err != nil {
		t.Fatal(err)
	}
	master, err := os.ReadFile("/usr/share/postfix/master.cf.dist")
	if err != nil {
		t.Fatalf("postfix's master.cf template (./test/run installs postfix): %v", err)
	}
	if err := os.WriteFile(filepath.Join(p.etc, "master.cf"), master, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.etc, "main.cf"), []byte(p.mainCF(opts)), 0o644); err != nil {
		t.Fatal(err)
	}
	if len(opts.SASLUsers) > 0 {
		p.setupSASL(opts.SASLUsers)
	}
	if len(opts.Main) > 0 {
		keys := make([]string, 0, len(opts.Main))
		for k := range opts.Main {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		args := []string{"-c", p.etc, "-e"}
		for _, k := range keys {
			args = append(args, k+"="+opts.Main[k])
		}
		testenv.Run(t, "postconf", args...)
	}

	// master.cf: no chroot (the queue is not a chroot jail here), and the
	// port-25 smtpd replaced by ours on a free port.
	testenv.Run(t, "postconf", "-c", p.etc, "-F", "*/*/chroot = n")
	testenv.Run(t, "postconf", "-c", p.etc, "-MX", "smtp/inet")
	named := " -o milter_macro_daemon_name=smtpd"
	if opts.UnnamedListener {
		named = ""
	}
	testenv.Run(t, "postconf", "-c", p.etc, "-M", p.Addr+"/inet = "+p.Addr+" inet n - n - - smtpd"+named)
	if opts.Submission {
		testenv.Run(t, "postconf", "-c", p.etc, "-M", p.SubmissionAddr+"/inet = "+p.SubmissionAddr+
			" inet n - n - - smtpd -o milter_macro_daemon_name=submission -o syslog_name=postfix/submission")
	}

	testenv.Run(t, bin, "-c", p.etc, "start") // runs "postfix check" first
	p.active = true
	t.Cleanup(p.Stop)
	for _, a := range []string{p.Addr, p.SubmissionAddr} {
		if a == "" {
			continue
		}
		if err := testenv.Poll(20*time.Second, func() error { return testenv.TCPListening(a) }); err != nil {
			t.Fatalf("postfix did not listen on %s: %v\nmaillog:\n%s", a, err, p.Log())
		}
	}
	return p
}

func (p *Postfix) mainCF(opts PostfixOptions) string {
	dir := p.Dir
	action := opts.DefaultAction
	if action == "" {
		action = "tempfail"
	}
	var b strings.Builder
	set := func(k, v string) { fmt.Fprintf(&b, "%s = %s\n", k, v) }
	set("compatibility_level", "3.6")
	set("queue_directory", p.queue)
	set("data_directory", filepath.Join(dir, "data"))
	set("maillog_file", filepath.Join(dir, "maillog"))
	set("maillog_file_prefixes", "/var, /dev/stdout, "+dir)
	set("myhostname", "mx.example.test")
	set("mydestination", "")
	set("relayhost", "["+hostOf(p.Sink.Addr)+"]:"+portOf(p.Sink.Addr))
	// Every domain is a relay domain: tests pose as outside clients with
	// XCLIENT, and their mail must still be relayed to the sink.
	set("relay_domains", "static:ALL")
	set("inet_interfaces", "loopback-only")
	set("inet_protocols", "ipv4")
	set("mynetworks", "127.0.0.0/8")
	set("smtp_dns_support_level", "disabled")
	set("smtpd_authorized_xclient_hosts", "127.0.0.0/8")
	set("alias_maps", "")
	set("alias_database", "")
	set("biff", "no")
	// Connection limits of Postfix's own (anvil) must not hide sluice's.
	set("smtpd_client_connection_count_limit", "0")
	set("smtpd_client_connection_rate_limit", "0")
	if opts.Milter != "" {
		set("smtpd_milters", opts.Milter)
		set("milter_protocol", "6")
		set("milter_default_action", action)
		macros := [][2]string{
			{"milter_connect_macros", "j {daemon_name} {daemon_addr} {daemon_port} v _ {client_addr} {client_name} {client_ptr}"},
			{"milter_helo_macros", "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}"},
			{"milter_mail_macros", "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer} {client_addr} {daemon_name}"},
			{"milter_rcpt_macros", "i {rcpt_addr} {rcpt_host} {rcpt_mailer} {auth_authen}"},
			{"milter_end_of_header_macros", "i"},
			{"milter_end_of_data_macros", "i {auth_authen} {daemon_name}"},
		}
		for _, m := range macros {
			if opts.NoMacros {
				m[1] = ""
			}
			set(m[0], m[1])
		}
	}
	return b.String()
}

func (p *Postfix) setupSASL(users map[string]string) {
	t := p.t
	t.Helper()
	sasl := filepath.Join(p.etc, "sasl")
	db := filepath.Join(p.etc, "sasldb2")
	if err := os.MkdirAll(sasl, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: " + db + "\n"
	if err := os.WriteFile(filepath.Join(sasl, "smtpd.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	makeSASLDB(t, db, users)
	_, gid, err := postfixIDs()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(db, 0, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(db, 0o640); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(p.etc, "main.cf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintf(f, "smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = cyrus\nsmtpd_sasl_path = smtpd\ncyrus_sasl_config_path = %s\n", sasl)
}

// makeSASLDB writes a Cyrus sasldb with the users ("user@realm" ->
// password).
func makeSASLDB(t testing.TB, db string, users map[string]string) {
	t.Helper()
	testenv.Tool(t, "saslpasswd2")
	for id, pass := range users {
		user, realm, ok := strings.Cut(id, "@")
		if !ok {
			t.Fatalf("SASL user %q: want user@realm", id)
		}
		cmd := testenv.Command("saslpasswd2", "-p", "-f", db, "-c", "-u", realm, user)
		cmd.Stdin = strings.NewReader(pass)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("saslpasswd2 %s: %v: %s", id, err, out)
		}
	}
}

// Postconf changes main.cf settings ("name=value") and reloads Postfix.
func (p *Postfix) Postconf(settings ...string) {
	p.t.Helper()
	testenv.Run(p.t, "postconf", append([]string{"-c", p.etc, "-e"}, settings...)...)
	testenv.Run(p.t, p.bin, "-c", p.etc, "reload")
}

// Stop stops Postfix and waits until its master process is gone.
func (p *Postfix) Stop() {
	if !p.active {
		return
	}
	p.active = false
	if out, err := testenv.RunErr(p.bin, "-c", p.etc, "stop"); err != nil {
		p.t.Errorf("postfix stop: %v\n%s", err, out)
	}
	// "postfix stop" returns before the master exits.
	err := testenv.Poll(20*time.Second, func() error {
		if _, err := testenv.RunErr(p.bin, "-c", p.etc, "status"); err == nil {
			return fmt.Errorf("postfix is still running")
		}
		return nil
	})
	if err != nil {
		p.t.Errorf("postfix did not stop: %v", err)
	}
	if p.t.Failed() {
		p.t.Logf("postfix maillog:\n%s", p.Log())
	}
}

// Log returns Postfix's log so far.
func (p *Postfix) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.Dir, "maillog"))
	return string(b)
}

// QueueEntry is one message in Postfix's queue, as `postqueue -j` shows it.
type QueueEntry struct {
	QueueName  string `json:"queue_name"` // incoming, active, deferred, hold, maildrop
	QueueID    string `json:"queue_id"`
	ArrivalAt  int64  `json:"arrival_time"`
	Size       int64  `json:"message_size"`
	Sender     string `json:"sender"`
	Recipients []struct {
		Address     string `json:"address"`
		DelayReason string `json:"delay_reason"`
	} `json:"recipients"`
}

// Queue lists the messages in Postfix's queue.
func (p *Postfix) Queue() []QueueEntry {
	p.t.Helper()
	q, err := p.queueErr()
	if err != nil {
		p.t.Fatal(err)
	}
	return q
}

func (p *Postfix) queueErr() ([]QueueEntry, error) {
	out, err := testenv.Command("postqueue", "-c", p.etc, "-j").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("postqueue -j: %v: %s", err, out)
	}
	var q []QueueEntry
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		if len(strings.TrimSpace(sc.Text())) == 0 {
			continue
		}
		var e QueueEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("postqueue -j: %v: %q", err, sc.Text())
		}
		q = append(q, e)
	}
	return q, nil
}

// Held lists the messages in Postfix's hold queue.
func (p *Postfix) Held() []QueueEntry {
	p.t.Helper()
	var held []QueueEntry
	for _, e := range p.Queue() {
		if e.QueueName == "hold" {
			held = append(held, e)
		}
	}
	return held
}

// Postsuper runs postsuper on this Postfix's queue: "-H", "ALL" releases
// held messages (into the deferred queue: Flush sends them), "-d", "ALL"
// deletes every message.
func (p *Postfix) Postsuper(args ...string) string {
	p.t.Helper()
	return testenv.Run(p.t, "postsuper", append([]string{"-c", p.etc}, args...)...)
}

// Flush asks Postfix to retry every deferred message now.
func (p *Postfix) Flush() {
	p.t.Helper()
	testenv.Run(p.t, "postqueue", "-c", p.etc, "-f")
}

// WaitDelivered waits until the sink holds at least n messages and
// Postfix's queue holds none still on its way (held and deferred
// messages stay), then returns every message in the sink.
func (p *Postfix) WaitDelivered(n int, timeout time.Duration) []Message {
	p.t.Helper()
	err := testenv.Poll(timeout, func() error {
		q, err := p.queueErr()
		if err != nil {
			return err
		}
		moving := 0
		for _, e := range q {
			if e.QueueName == "incoming" || e.QueueName == "active" || e.QueueName == "maildrop" {
				moving++
			}
		}
		if got := p.Sink.Count(); got < n || moving > 0 {
			return fmt.Errorf("sink has %d of %d messages, %d in Postfix's queue still moving (%d queued in all)", got, n, moving, len(q))
		}
		return nil
	})
	if err != nil {
		p.t.Fatalf("waiting for delivery: %v\nqueue: %+v\nmaillog:\n%s", err, p.Queue(), p.Log())
	}
	return p.Sink.Messages(p.t)
}

func postfixIDs() (uid, gid int, err error) {
	u, err := user.Lookup("postfix")
	if err != nil {
		return 0, 0, fmt.Errorf("user postfix (./test/run installs postfix): %v", err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid, nil
}

func hostOf(addr string) string { h, _, _ := strings.Cut(addr, ":"); return h }
func portOf(addr string) string { _, p, _ := strings.Cut(addr, ":"); return p }

// Submit hands a message to Postfix as a local program does, through its
// sendmail(1) and postdrop: pickup and cleanup then run it through
// non_smtpd_milters (PostfixOptions.Main), not smtpd.
func (p *Postfix) Submit(from string, to []string, msg []byte) {
	p.t.Helper()
	cmd := testenv.Command("sendmail", append([]string{"-C", p.etc, "-f", from, "--"}, to...)...)
	cmd.Stdin = bytes.NewReader(msg)
	if out, err := cmd.CombinedOutput(); err != nil {
		p.t.Fatalf("sendmail -f %s: %v\n%s", from, err, out)
	}
}
