package alert

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"mime/quotedprintable"
	"net/mail"
	"os/exec"
	"strings"
	"time"

	"sluice/smtp"
)

// newMailer makes the sender of a mail target: a plain-text message piped
// to the local MTA's sendmail binary, which queues it like any local mail.
func newMailer(c Config) func(context.Context, *Event) error {
	return func(ctx context.Context, ev *Event) error {
		to := []string{c.Mail}
		if c.NotifySender {
			if a := localAddress(ev, c.LocalDomains); a != "" && !strings.EqualFold(a, c.Mail) {
				to = append(to, a)
			}
		}
		from := c.From
		if from == "" {
			from = c.Mail
		}
		msg := composeMail(ev, from, to)
		args := []string{"-i", "-f", from, "--"}
		cmd := exec.CommandContext(ctx, c.SendmailPath, append(args, to...)...)
		cmd.Stdin = bytes.NewReader(msg)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.WaitDelay = time.Second
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s: %v: %s", c.SendmailPath, err, smtp.Printable(strings.TrimSpace(out.String()), 300))
		}
		return nil
	}
}

// localAddress is the account the event is about, when it is an address
// of one of domains: the SASL user, else the sender. What a client wrote
// goes on sendmail's command line only as a plain address.
func localAddress(ev *Event, domains []string) string {
	for _, a := range []string{ev.SASLUser, ev.Sender} {
		if a == "" || strings.HasPrefix(a, "-") || strings.ContainsAny(a, " \t\r\n<>()\",;:\\[]") {
			continue
		}
		p, err := mail.ParseAddress(a)
		if err != nil || p.Address != a {
			continue
		}
		at := strings.LastIndexByte(a, '@')
		for _, d := range domains {
			if at > 0 && strings.EqualFold(a[at+1:], d) {
				return a
			}
		}
	}
	return ""
}

// maxField bounds what a client wrote in an alert's text.
const maxField = 200

// composeMail writes the alert as a message: header fields in 7-bit
// ASCII on one line each whatever the client sent (smtp.ASCII escapes the
// rest), the text quoted-printable.
func composeMail(ev *Event, from string, to []string) []byte {
	var b bytes.Buffer
	h := func(name, value string) { fmt.Fprintf(&b, "%s: %s\r\n", name, value) }
	h("From", "sluice <"+from+">")
	h("To", to[0])
	if len(to) > 1 {
		h("Cc", strings.Join(to[1:], ", "))
	}
	h("Subject", smtp.ASCII(fmt.Sprintf("[sluice] %s: %s (%s)", subjectVerb(ev), ev.Key, ev.Rule), 200))
	h("Date", ev.Time.Format(time.RFC1123Z))
	var id [12]byte
	rand.Read(id[:])
	h("Message-ID", "<"+hex.EncodeToString(id[:])+".alert@"+smtp.ASCII(hostPart(ev.Host), 100)+">")
	h("Auto-Submitted", "auto-generated")
	h("MIME-Version", "1.0")
	h("Content-Type", "text/plain; charset=utf-8")
	h("Content-Transfer-Encoding", "quoted-printable")
	b.WriteString("\r\n")
	w := quotedprintable.NewWriter(&b)
	w.Write([]byte(mailText(ev)))
	w.Close()
	return b.Bytes()
}

func hostPart(h string) string {
	if h == "" || strings.ContainsAny(h, "<>@ \t\r\n") {
		return "localhost"
	}
	return h
}

func subjectVerb(ev *Event) string {
	switch {
	case ev.Event == KindRestrict && ev.Mode == "enforce":
		return "restricted"
	case ev.Event == KindRestrict:
		return "would restrict"
	case ev.Event == KindHold:
		return "held mail of"
	}
	return "refused mail of"
}

// mailText says what happened in plain words, then the facts, then what
// to do.
func mailText(ev *Event) string {
	var b strings.Builder
	p := func(s string) string { return smtp.Printable(s, maxField) }
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\r\n", args...) }
	switch ev.Event {
	case KindRestrict:
		until := "until an admin releases it"
		if !ev.Until.IsZero() {
			until = "until " + ev.Until.UTC().Format(time.RFC3339)
		}
		if ev.Mode == "enforce" {
			line("sluice restricted %s: it crossed the limit %s of rule %s.", p(ev.Key), p(ev.Limit), p(ev.Rule))
			line("Its mail gets %q %s, even once the window has room again.", ev.Action, until)
		} else {
			line("%s crossed the limit %s of rule %s, which restricts %s;", p(ev.Key), p(ev.Limit), p(ev.Rule), until)
			line("the rule runs in %s mode, so nothing was restricted.", ev.Mode)
		}
	case KindHold:
		line("sluice held a message of %s (rule %s, limit %s).", p(ev.Key), p(ev.Rule), p(ev.Limit))
	default:
		line("sluice refused mail of %s: it crossed the limit %s of rule %s (%s, mode %s).", p(ev.Key), p(ev.Limit), p(ev.Rule), ev.Action, ev.Mode)
	}
	line("")
	field := func(name, v string) {
		if v != "" {
			line("  %-14s %s", name+":", p(v))
		}
	}
	field("time", ev.Time.UTC().Format(time.RFC3339))
	field("host", ev.Host)
	field("counts", ev.Detail)
	field("client IP", ev.ClientIP)
	field("HELO", ev.Helo)
	field("sender", ev.Sender)
	field("SASL user", ev.SASLUser)
	field("queue id", ev.QueueID)
	if len(ev.RcptDomains) > 0 {
		ds := make([]string, len(ev.RcptDomains))
		for i, d := range ev.RcptDomains {
			ds[i] = p(d)
		}
		field("last recipient domains", strings.Join(ds, ", "))
	}
	if ev.Release != "" {
		line("")
		line("To lift the restriction (the key is not restricted again until the end of")
		line("the current window), and list the queue ids of the mail held meanwhile:")
		line("")
		line("  %s", smtp.Printable(ev.Release, 1000))
	}
	return b.String()
}
