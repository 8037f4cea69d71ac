package milter

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"sluice/smtp"
)

// FuzzSession drives one whole session with client-chosen macros and
// addresses: raw macro packets (NUL-separated names and values, any
// bytes), a connect with any host, family and address, HELO, sender,
// recipient and a header, two messages so that the tiny limits are
// crossed. Whatever comes in, sluice must not panic, must answer with
// well-formed replies and one-line headers, and must release the session
// when the MTA hangs up.
func FuzzSession(f *testing.F) {
	f.Add([]byte("{daemon_name}\x00smtpd\x00{client_addr}\x00192.0.2.1\x00"), "client.example", byte('4'), "192.0.2.1",
		"helo.example", []byte("i\x00ABC123\x00{auth_authen}\x00alice\x00"), "alice@example.org", "bob@example.net",
		"Subject", "hello", []byte("i\x00ABC123\x00"))
	f.Add([]byte("{client_addr}\x00IPv6:2001:db8::1\x00"), "[2001:db8::1]", byte('6'), "IPv6:2001:db8::1",
		"[IPv6:2001:db8::1]", []byte("{auth_authen}"), "", "postmaster", "X-Sluice-Limit", "forged", []byte(""))
	f.Add([]byte(""), "", byte('U'), "", "", []byte("\x00\x00\x00"), "a\r\nb@x", "c\nd@y", "X\r\nY", "v\r\n\tw", []byte("{msg_size}\x00-1\x00"))
	f.Add([]byte("{client_addr}\x00[10.0.0.1]\x00{daemon_name}\x00\xff\xfe"), "\x00", byte('L'), "/var/run/x",
		"\xff\xfe\xfd", []byte("i\x00\xc3(\x00"), "\xc3(@\xff.test", "x@[127.0.0.1]", "", "", []byte("{msg_size}\x0099999999999999999999\x00"))

	// One server for every input of this process: starting a server per
	// input would fuzz the setup, not the session.
	h := newHostileServer(f, smtp.ModeTag, 0, hostileRules()...)
	f.Fuzz(func(t *testing.T, connMacros []byte, host string, family byte, addr string, helo string,
		mailMacros []byte, sender, rcpt, hname, hvalue string, eomMacros []byte) {
		h.t = t
		r := h.dial()
		defer func() {
			r.c.Close()
			h.waitSessions(0)
			h.checkNoPanics()
			checkLogLines(t, h.json.String())
			h.reset()
		}()
		r.negotiate()

		conn := append(cstr(host), family)
		if family == '4' || family == '6' {
			conn = binary.BigEndian.AppendUint16(conn, 25)
		}
		if family != 'U' {
			conn = append(conn, cstr(addr)...)
		}
		steps := [][]byte{
			packet('D', []byte{'C'}, connMacros), packet('C', conn),
			packet('H', cstr(helo)),
		}
		for i := 0; i < 2; i++ {
			steps = append(steps,
				packet('D', []byte{'M'}, mailMacros), packet('M', cstr("<"+sender+">")),
				packet('R', cstr("<"+rcpt+">")),
				packet('L', cstr(hname, hvalue)), packet('N'), packet('B', []byte("body\r\n")),
				packet('D', []byte{'E'}, eomMacros), packet('E'),
				packet('A'))
		}
		steps = append(steps, packet('Q'))
		for _, p := range steps {
			if r.write(p) != nil {
				return
			}
			code := p[4]
			if code == 'D' || code == 'A' || code == 'Q' {
				continue // no answer
			}
			ans, data, mods, err := r.answer()
			if err != nil {
				// A malformed packet (a connect cut short) ends the
				// session; that is a clean end, not a finding.
				return
			}
			checkReply(t, "fuzz", ans, data)
			for _, m := range mods {
				checkModification(t, "fuzz", m)
			}
			if ans == 'y' && bytes.HasPrefix(data, []byte("421")) {
				return // sluice asked the MTA to hang up
			}
		}
		r.hungUpWithin(3 * time.Second)
	})
}

// hungUpWithin waits for the server to close after QUIT; the session
// check that follows fails if it did not.
func (r *rawConn) hungUpWithin(d time.Duration) {
	r.c.SetReadDeadline(time.Now().Add(d))
	var b [64]byte
	for {
		if _, err := r.c.Read(b[:]); err != nil {
			return
		}
	}
}
