package milter_test

// The OpenSPF RFC 7208 suite through the milter: each case is a milter
// session from the case's client, HELO and MAIL FROM, driven by
// go-milter's client against a real Server whose policy is built as
// cmd/sluice builds it, with DNS asked of a test server on loopback that
// serves the scenario's zone. The results are read from the headers the
// session adds at end of message.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d--j/go-milter"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"sluice/auth/spftest"
	"sluice/config"
	sluicemilter "sluice/milter"
	"sluice/socket"
	"sluice/test/dnstest"
)

const suiteAuthservID = "mx.sluice.test"

// startSuiteMilter loads body as sluice's config file, builds the engine
// as the daemon does (package config: memory store, default trusted
// list, sender checks) and serves it on a unix socket, whose path it
// returns.
func startSuiteMilter(t *testing.T, body string, log *zap.Logger) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "sluice.sock")
	c, err := config.Parse("suite.toml", []byte(fmt.Sprintf("listen = %q\n%s", "unix:"+sock, body)))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	store, fallback, err := config.OpenStores(&c.Store, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	b, err := c.Build(config.Runtime{Store: store, Fallback: fallback, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	srv := sluicemilter.NewServer(c.MilterConfig, b.Engine, log)
	ln, err := socket.Listen(c.Listen)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		// Not t.Context(): it is already done when cleanups run.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return sock
}

// TestRFC7208SuiteThroughMilter runs every case of the RFC 7208 suite as
// a milter session, judged by the Received-SPF and
// Authentication-Results the session adds. Each message also carries a
// forged Authentication-Results with our authserv-id, which must be
// removed, beside one from another host, which must stay.
func TestRFC7208SuiteThroughMilter(t *testing.T) {
	dnsSrv := dnstest.Start(t, nil)
	// A short DNS timeout keeps the suite's TIMEOUT cases quick; the rate
	// cap is far above what the suite sends.
	sock := startSuiteMilter(t, fmt.Sprintf(`
authserv_id = %q

[dns]
servers = [%q]
timeout = "400ms"
rate = 100000
burst = 10000

[spf]
enabled = true
`, suiteAuthservID, dnsSrv.Addr()), zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))

	outcomes := spftest.Run(t, spftest.Options{
		Path:       spftest.SuitePath(),
		Server:     dnsSrv,
		AuthservID: suiteAuthservID,
	}, func(t *testing.T, c spftest.Case) ([]spftest.Field, error) {
		return suiteSession(sock, c)
	})
	summary := spftest.Summary(outcomes, nil)
	t.Log("RFC 7208 suite through the milter: " + summary)
	if os.Getenv("SPF_SUITE_SUMMARY") != "" {
		fmt.Print(summary)
	}
}

// suiteSession runs one case: a message from the case's client, HELO and
// sender, whose header holds two incoming Authentication-Results. It
// returns the headers the milter added, and an error when the session went
// wrong in any other way (a refusal, a forged header kept, another one
// removed).
func suiteSession(sock string, c spftest.Case) ([]spftest.Field, error) {
	header := [][2]string{
		{"Authentication-Results", "other.example; spf=pass smtp.mailfrom=example.com"},
		{"From", "someone@example.com"},
		{"Authentication-Results", suiteAuthservID + "; spf=pass smtp.mailfrom=forged.example"},
		{"Subject", c.Name},
	}
	refused, mods, err := milterMessage(sock, c.Host, c.Helo, c.MailFrom, header)
	if err != nil {
		return nil, err
	}
	if refused != nil {
		return nil, fmt.Errorf("MAIL FROM refused with %s, want continue (every SPF result is only tagged)", refused.SMTPReply)
	}
	var fields []spftest.Field
	var removed []string
	for _, m := range mods {
		switch m.Type {
		case milter.ActionAddHeader, milter.ActionInsertHeader:
			fields = append(fields, spftest.Field{Name: m.HeaderName, Value: m.HeaderValue})
		case milter.ActionChangeHeader:
			if m.HeaderValue != "" {
				return nil, fmt.Errorf("changed %s #%d to %q, want only removals", m.HeaderName, m.HeaderIndex, m.HeaderValue)
			}
			removed = append(removed, fmt.Sprintf("%s #%d", strings.ToLower(m.HeaderName), m.HeaderIndex))
		default:
			return nil, fmt.Errorf("unexpected modification %v", m)
		}
	}
	// The forged one is the second Authentication-Results of the header.
	if want := "authentication-results #2"; len(removed) != 1 || removed[0] != want {
		return fields, fmt.Errorf("removed %q, want only %q (the forged one with our authserv-id)", removed, want)
	}
	return fields, nil
}

// milterMessage drives one milter session as Postfix does: connect from
// host, HELO, MAIL FROM, a recipient, header, a line of body, end of
// message, abort. It returns the MAIL FROM action when the milter refused
// it (and the session stops there), else the end-of-message
// modifications. Any other answer than continue is an error.
func milterMessage(sock, host, helo, from string, header [][2]string) (*milter.Action, []milter.ModifyAction, error) {
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return nil, nil, fmt.Errorf("bad host %q: %w", host, err)
	}
	family := milter.FamilyInet
	if ip.Is6() {
		family = milter.FamilyInet6
	}
	macros := milter.NewMacroBag()
	s, err := milter.NewClient("unix", sock, milter.WithDialer(&net.Dialer{Timeout: time.Second}),
		milter.WithReadTimeout(30*time.Second), milter.WithWriteTimeout(5*time.Second)).Session(macros)
	if err != nil {
		return nil, nil, err
	}
	defer s.Close()
	step := func(what string, act *milter.Action, err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if act.Type != milter.ActionContinue {
			return fmt.Errorf("%s: milter answered %v, want continue", what, act)
		}
		return nil
	}
	macros.Set("j", suiteAuthservID)
	macros.Set("{daemon_name}", "smtpd")
	act, err := s.Conn("unknown", family, 25025, host)
	if err := step("connect", act, err); err != nil {
		return nil, nil, err
	}
	act, err = s.Helo(helo)
	if err := step("helo", act, err); err != nil {
		return nil, nil, err
	}
	if act, err = s.Mail(from, ""); err != nil {
		return nil, nil, fmt.Errorf("mail from: %w", err)
	}
	if act.Type != milter.ActionContinue {
		return act, nil, nil
	}
	act, err = s.Rcpt("postmaster@"+suiteAuthservID, "")
	if err := step("rcpt to", act, err); err != nil {
		return nil, nil, err
	}
	act, err = s.DataStart()
	if err := step("data", act, err); err != nil {
		return nil, nil, err
	}
	for _, h := range header {
		act, err := s.HeaderField(h[0], h[1], nil)
		if err := step("header "+h[0], act, err); err != nil {
			return nil, nil, err
		}
	}
	act, err = s.HeaderEnd()
	if err := step("end of header", act, err); err != nil {
		return nil, nil, err
	}
	mods, act, err := s.BodyReadFrom(bytes.NewReader([]byte("test\r\n")))
	if err == nil && act.Type == milter.ActionAccept {
		act.Type = milter.ActionContinue // go-milter accepts a message sluice let through
	}
	if err := step("end of message", act, err); err != nil {
		return nil, nil, err
	}
	s.Abort(nil) // as Postfix does after every message
	return nil, mods, nil
}
