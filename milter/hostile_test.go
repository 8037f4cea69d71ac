package milter

// Hostile input at the milter socket: malformed packets, commands out of
// order, silent peers, and client-written values (HELO, senders,
// recipients) built to break headers and log lines. A bad session must end
// cleanly, release what it held, and never hurt another session.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/d--j/go-milter"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"sluice/conf"
	"sluice/limits"
	"sluice/policy"
	"sluice/smtp"
	"sluice/socket"
)

// maxLogValue is the engine's bound on a client-written value in a log line.
const maxLogValue = 256

// hostileServer is a Server on a unix socket whose logs are kept both as
// entries and as the JSON lines sluice would print.
type hostileServer struct {
	t      testing.TB
	su     setup
	log    *zap.Logger
	srv    *Server
	sock   string
	logs   *observer.ObservedLogs
	json   *lockedBuffer
	stdlog *lockedBuffer // go-milter's own log (the standard logger)
	conns  *connCounts
}

// connCounts hears the connections the server refused or cut off.
type connCounts struct {
	nopObserver
	mu      sync.Mutex
	refused int
	cut     map[string]int
}

func (o *connCounts) ConnRefused() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.refused++
}

func (o *connCounts) ConnCut(reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.cut[reason]++
}

func (o *connCounts) refusals() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.refused
}

func (o *connCounts) cuts(reason string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.cut[reason]
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Reset()
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// hostileRules count at every stage and on every client-written value, so
// that hostile values reach keys, tags and log lines.
func hostileRules() []limits.Rule {
	return []limits.Rule{
		{Name: "one-conn", Count: "concurrent", Per: "client_ip", Max: 1},
		{Name: "per-helo", Count: "messages", Per: "helo", Rate: "1/1h"},
		{Name: "per-sender", Count: "messages", Per: "sender", Rate: "1/1h",
			Reply: policy.MustReply("451 4.7.1 Too many messages from {sender} ({key}) at {client_ip}; try again in {retry_after}")},
		{Name: "per-domain", Count: "messages", Per: "sender_domain", Rate: "1/1h"},
		{Name: "per-rcpt", Count: "recipients", Per: []any{"rcpt", "client_ip"}, Rate: "1/1h"},
		{Name: "per-rcpt-domain", Count: "recipients", Per: "rcpt_domain", Rate: "1/1h"},
	}
}

func newHostileServer(t testing.TB, mode smtp.Mode, idle time.Duration, rules ...limits.Rule) *hostileServer {
	t.Helper()
	return newHostileServerWith(t, nil, mode, idle, rules...)
}

// newHostileServerWith is newHostileServer with set changing the milter
// config after its defaults.
func newHostileServerWith(t testing.TB, set func(*Config), mode smtp.Mode, idle time.Duration, rules ...limits.Rule) *hostileServer {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	js := &lockedBuffer{}
	enc := zap.NewProductionEncoderConfig()
	jcore := zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.AddSync(js), zap.DebugLevel)
	lg := zap.New(zapcore.NewTee(core, jcore))
	su := setup{Mode: mode, Rules: rules}
	eng := testEngine(t, su, lg)
	mc := Config{}
	mc.Defaults()
	if idle > 0 {
		mc.IdleTimeout = conf.Duration(idle)
	}
	sock := filepath.Join(t.TempDir(), "s.sock")
	mc.Listen = "unix:" + sock
	if set != nil {
		set(&mc)
	}
	srv := NewServer(mc, eng, lg)
	counts := &connCounts{cut: make(map[string]int)}
	srv.Observe(counts)
	ln, err := socket.Listen(mc.Listen)
	if err != nil {
		t.Fatal(err)
	}
	std := &lockedBuffer{}
	prevOut, prevFlags := log.Writer(), log.Flags()
	log.SetOutput(std)
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	t.Cleanup(func() {
		srv.Shutdown(t.Context())
		<-done
		log.SetOutput(prevOut)
		log.SetFlags(prevFlags)
	})
	return &hostileServer{t: t, su: su, log: lg, srv: srv, sock: sock, logs: logs, json: js, stdlog: std, conns: counts}
}

// checkNoPanics fails t if a panic was recovered anywhere: in sluice
// (logged by guard) or in go-milter's command loop.
func (h *hostileServer) checkNoPanics() {
	h.t.Helper()
	if l := h.logs.FilterMessage("recovered from a panic"); l.Len() > 0 {
		h.t.Errorf("%d panics recovered: %v", l.Len(), l.All()[0].ContextMap())
	}
	if s := h.stdlog.String(); strings.Contains(s, "panic") {
		h.t.Errorf("go-milter recovered a panic:\n%s", s)
	}
}

// reset forgets the logs so far (a fuzz run would otherwise keep them all).
func (h *hostileServer) reset() {
	h.logs.TakeAll()
	h.json.reset()
	h.stdlog.reset()
}

// waitSessions waits until the server has n sessions open: a session that
// ended ran its close hook (and so released its slots).
func (h *hostileServer) waitSessions(n int) {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for h.srv.Sessions() != n {
		if time.Now().After(deadline) {
			h.t.Fatalf("server has %d sessions open, want %d", h.srv.Sessions(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rawConn speaks the milter protocol packet by packet, malformed or not.
type rawConn struct {
	t testing.TB
	c net.Conn
}

func (h *hostileServer) dial() *rawConn {
	h.t.Helper()
	c, err := net.DialTimeout("unix", h.sock, time.Second)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return &rawConn{t: h.t, c: c}
}

// write sends raw bytes; an error is returned, not fatal: the server may
// have hung up, which is what some cases expect.
func (r *rawConn) write(b []byte) error {
	r.c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, err := r.c.Write(b)
	return err
}

func packet(code byte, data ...[]byte) []byte {
	n := 1
	for _, d := range data {
		n += len(d)
	}
	b := binary.BigEndian.AppendUint32(nil, uint32(n))
	b = append(b, code)
	for _, d := range data {
		b = append(b, d...)
	}
	return b
}

func cstr(ss ...string) []byte {
	var b []byte
	for _, s := range ss {
		b = append(append(b, s...), 0)
	}
	return b
}

func (r *rawConn) send(code byte, data ...[]byte) error { return r.write(packet(code, data...)) }

// read reads one packet; io.EOF (or a reset) means the server hung up.
func (r *rawConn) read(timeout time.Duration) (byte, []byte, error) {
	r.c.SetReadDeadline(time.Now().Add(timeout))
	var hdr [4]byte
	if _, err := io.ReadFull(r.c, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > 1<<20 {
		return 0, nil, fmt.Errorf("server sent a packet of length %d", n)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(r.c, data); err != nil {
		return 0, nil, err
	}
	return data[0], data[1:], nil
}

// answer reads until a final answer (skipping modifications and progress)
// and returns it with the modifications seen.
func (r *rawConn) answer() (byte, []byte, [][]byte, error) {
	var mods [][]byte
	for {
		code, data, err := r.read(3 * time.Second)
		if err != nil {
			return 0, nil, mods, err
		}
		switch code {
		case 'p':
			continue
		case 'h', 'm', 'i', 'q', '+', '-', 'b', 'e':
			mods = append(mods, append([]byte{code}, data...))
			continue
		}
		return code, data, mods, nil
	}
}

// hungUp reports whether the server closed the connection: the next read
// ends in EOF or a reset rather than a timeout.
func (r *rawConn) hungUp() bool {
	for {
		_, _, err := r.read(3 * time.Second)
		if err == nil {
			continue // a reply to something sent before the fault
		}
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	}
}

// negotiate offers protocol 6 and macro requests, and no protocol option:
// the MTA sends every event and waits for every answer.
func (r *rawConn) negotiate() {
	r.t.Helper()
	data := binary.BigEndian.AppendUint32(nil, 6)
	data = binary.BigEndian.AppendUint32(data, uint32(milter.OptAddHeader|milter.OptChangeHeader|milter.OptQuarantine|milter.OptSetMacros))
	data = binary.BigEndian.AppendUint32(data, 0)
	if err := r.send('O', data); err != nil {
		r.t.Fatal(err)
	}
	code, _, err := r.read(3 * time.Second)
	if err != nil || code != 'O' {
		r.t.Fatalf("negotiation: code %q, %v", code, err)
	}
}

// connect sends the connect macros and event for a TCP client at ip and
// returns the answer's code.
func (r *rawConn) connect(ip string) byte {
	r.t.Helper()
	r.send('D', []byte{'C'}, cstr("{daemon_name}", "smtpd", "{client_addr}", ip))
	port := binary.BigEndian.AppendUint16(nil, 25000)
	if err := r.send('C', cstr("client.example"), []byte{'4'}, port, cstr(ip)); err != nil {
		r.t.Fatal(err)
	}
	code, _, _, err := r.answer()
	if err != nil {
		r.t.Fatalf("connect as %s: %v", ip, err)
	}
	return code
}

// TestMalformedPackets sends each kind of broken input on its own
// connection while a healthy session stays open mid-transaction, and
// checks that every bad connection ends (or is answered) cleanly, that its
// concurrency slot comes back, and that the healthy session and new ones
// go on.
func TestMalformedPackets(t *testing.T) {
	h := newHostileServer(t, smtp.ModeEnforce, 0, hostileRules()...)

	good := h.dial()
	good.negotiate()
	if code := good.connect("192.0.2.1"); code != 'c' {
		t.Fatalf("healthy session: connect answered %q", code)
	}
	good.send('H', cstr("good.example"))
	if code, _, _, err := good.answer(); err != nil || code != 'c' {
		t.Fatalf("healthy session: HELO answered %q, %v", code, err)
	}
	good.send('M', cstr("<good@example.org>"))
	if code, _, _, err := good.answer(); err != nil || code != 'c' {
		t.Fatalf("healthy session: MAIL answered %q, %v", code, err)
	}
	h.waitSessions(1)

	const badIP = "198.51.100.66" // one-conn allows one session: each case must release it
	hugeMacro := cstr("{client_addr}", strings.Repeat("x", 900_000))
	type step func(r *rawConn) error
	cases := []struct {
		name string
		// negotiate first; and connect as badIP
		negotiated, connected bool
		steps                 []step
		// the server must hang up; otherwise it must answer the last step
		// with one of want.
		hangUp bool
		want   string
	}{
		{name: "truncated body then EOF", steps: []step{
			func(r *rawConn) error { return r.write([]byte{0, 0, 0, 100, 'M', '<', 'a'}) },
			func(r *rawConn) error { return r.c.(*net.UnixConn).CloseWrite() },
		}, hangUp: true},
		{name: "truncated length then EOF", steps: []step{
			func(r *rawConn) error { return r.write([]byte{0, 0}) },
			func(r *rawConn) error { return r.c.(*net.UnixConn).CloseWrite() },
		}, hangUp: true},
		{name: "length 4 GiB", steps: []step{
			func(r *rawConn) error { return r.write([]byte{0xff, 0xff, 0xff, 0xff, 'C', 'x'}) },
		}, hangUp: true},
		{name: "length just over 1 MiB", connected: true, steps: []step{
			func(r *rawConn) error { return r.write([]byte{0, 0x10, 0, 1, 'L'}) },
		}, hangUp: true},
		{name: "zero length", steps: []step{
			func(r *rawConn) error { return r.write([]byte{0, 0, 0, 0}) },
		}, hangUp: true},
		{name: "unknown command before negotiation", steps: []step{
			func(r *rawConn) error { return r.send('Z', []byte("junk")) },
		}, hangUp: true},
		{name: "unknown command mid-transaction", connected: true, steps: []step{
			func(r *rawConn) error { return r.send('M', cstr("<a@example.org>")) },
			func(r *rawConn) error { return r.send('Z') },
		}, hangUp: true},
		// QUIT_NC: the MTA reuses the connection for a new client; the
		// last one's slot is freed (one-conn allows one session).
		{name: "QUIT_NC, then a new client", connected: true, steps: []step{
			func(r *rawConn) error {
				r.send('K')
				return r.send('C', cstr("again"), []byte{'4', 0, 25}, cstr(badIP))
			},
		}, want: "c"},
		{name: "empty connect", negotiated: true, steps: []step{
			func(r *rawConn) error { return r.send('C') },
		}, hangUp: true},
		{name: "connect with no address (family unknown)", negotiated: true, steps: []step{
			func(r *rawConn) error { return r.send('C', cstr("localhost"), []byte{'U'}) },
		}, want: "c"},
		{name: "connect with no address (unix socket)", negotiated: true, steps: []step{
			func(r *rawConn) error { return r.send('C', cstr("localhost"), []byte{'L', 0, 0}, cstr("")) },
		}, want: "c"},
		{name: "connect, unix socket, port cut off", negotiated: true, steps: []step{
			func(r *rawConn) error { return r.send('C', cstr("localhost"), []byte{'L'}, cstr("")) },
		}, hangUp: true},
		{name: "connect, family inet, port cut off", negotiated: true, steps: []step{
			func(r *rawConn) error { return r.send('C', cstr("h"), []byte{'4', 0}) },
		}, hangUp: true},
		{name: "connect with a garbage address", negotiated: true, steps: []step{
			func(r *rawConn) error {
				return r.send('C', cstr("h"), []byte{'6', 0, 25}, cstr("IPv6:not::an::address"))
			},
		}, hangUp: true},
		{name: "connect without NUL", negotiated: true, steps: []step{
			func(r *rawConn) error { return r.send('C', []byte("hostname-without-terminator")) },
		}, hangUp: true},
		{name: "connect without a family", negotiated: true, steps: []step{
			func(r *rawConn) error { return r.send('C', cstr("hostname")) },
		}, hangUp: true},
		{name: "MAIL before negotiation and connect", steps: []step{
			func(r *rawConn) error { return r.send('M', cstr("<early@example.org>")) },
		}, hangUp: true},
		{name: "MAIL before connect", negotiated: true, steps: []step{
			func(r *rawConn) error { return r.send('M', cstr("<early@example.org>")) },
		}, want: "cy"},
		{name: "MAIL without NUL", connected: true, steps: []step{
			func(r *rawConn) error { return r.send('M', []byte("<no-nul@example.org>")) },
		}, hangUp: true},
		{name: "RCPT without NUL", connected: true, steps: []step{
			func(r *rawConn) error { return r.send('M', cstr("<a@example.org>")) },
			func(r *rawConn) error { return r.send('R', []byte("<no-nul@example.org>")) },
		}, hangUp: true},
		// go-milter answers accept to sluice's continue at the end.
		{name: "RCPT, header and end of message with no MAIL", connected: true, steps: []step{
			func(r *rawConn) error { return r.send('R', cstr("<r@example.net>")) },
			func(r *rawConn) error { return r.send('L', cstr("Subject", "x")) },
			func(r *rawConn) error { return r.send('N') },
			func(r *rawConn) error { return r.send('B', []byte("body")) },
			func(r *rawConn) error { return r.send('E') },
		}, want: "a"},
		{name: "end of message twice", connected: true, steps: []step{
			func(r *rawConn) error { return r.send('M', cstr("<twice@example.org>")) },
			func(r *rawConn) error { return r.send('E') },
			func(r *rawConn) error { return r.send('E') },
		}, want: "a"},
		{name: "second connect in one session", connected: true, steps: []step{
			func(r *rawConn) error {
				return r.send('C', cstr("again"), []byte{'4', 0, 25}, cstr("203.0.113.9"))
			},
		}, want: "cy"},
		{name: "negotiation twice", connected: true, steps: []step{
			func(r *rawConn) error { return r.send('O', make([]byte, 12)) },
		}, hangUp: true},
		{name: "short negotiation", steps: []step{
			func(r *rawConn) error { return r.send('O', []byte{0, 0}) },
		}, hangUp: true},
		{name: "negotiation of protocol version 1", steps: []step{
			func(r *rawConn) error { return r.send('O', []byte{0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0}) },
		}, hangUp: true},
		{name: "empty macro packet", connected: true, steps: []step{
			func(r *rawConn) error { return r.send('D') },
		}, hangUp: true},
		// A step may write several packets; only its last gets an answer.
		{name: "macro packet with an odd count and no NUL", connected: true, steps: []step{
			func(r *rawConn) error {
				r.send('D', []byte{'M'}, cstr("i", "Q1", "{auth_authen}"), []byte("dangling"))
				return r.send('M', cstr("<m@example.org>"))
			},
		}, want: "cy"},
		{name: "macro values of 900 KB, over max_macro_bytes", connected: true, steps: []step{
			func(r *rawConn) error {
				r.send('D', []byte{'M'}, hugeMacro)
				return r.send('M', cstr("<big@example.org>"))
			},
		}, hangUp: true},
		{name: "header with three parts, and one without a name", connected: true, steps: []step{
			func(r *rawConn) error { return r.send('M', cstr("<h@example.org>")) },
			func(r *rawConn) error { return r.send('L', cstr("X-Three", "a", "b")) },
			func(r *rawConn) error { return r.send('L', cstr("", "no name")) },
		}, hangUp: true},
		{name: "header without value or NUL", connected: true, steps: []step{
			func(r *rawConn) error { return r.send('M', cstr("<h@example.org>")) },
			func(r *rawConn) error { return r.send('L', []byte("X-No-Nul")) },
		}, hangUp: true},
		{name: "header with an empty value", connected: true, steps: []step{
			func(r *rawConn) error { return r.send('M', cstr("<h@example.org>")) },
			func(r *rawConn) error { return r.send('L', cstr("X-Sluice-Limit", "")) },
		}, want: "c"},
		{name: "HELO without NUL", connected: true, steps: []step{
			func(r *rawConn) error { return r.send('H', []byte("helo-no-nul")) },
		}, want: "c"},
		{name: "DATA, which is not negotiated", connected: true, steps: []step{
			func(r *rawConn) error { return r.send('T') },
		}, want: "c"},
		{name: "abort and quit mid-transaction", connected: true, steps: []step{
			func(r *rawConn) error { return r.send('M', cstr("<q@example.org>")) },
			func(r *rawConn) error { return r.send('A') },
			func(r *rawConn) error { return r.send('Q') },
		}, hangUp: true},
		{name: "silence after connect, then EOF", connected: true, steps: []step{
			func(r *rawConn) error { return r.c.(*net.UnixConn).CloseWrite() },
		}, hangUp: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := h.dial()
			r.t = t
			defer func() {
				r.c.Close()
				h.waitSessions(1) // only the healthy session is left
			}()
			if tc.negotiated || tc.connected {
				r.negotiate()
			}
			if tc.connected {
				if code := r.connect(badIP); code != 'c' {
					t.Fatalf("connect as %s answered %q: the slot of an earlier case was not released", badIP, code)
				}
			}
			var last byte
			var err error
			for i, st := range tc.steps {
				if err = st(r); err != nil && !tc.hangUp {
					t.Fatalf("step %d: %v", i+1, err)
				}
				if tc.hangUp || i == len(tc.steps)-1 {
					continue
				}
				// Answer the steps that get one, as an MTA would wait.
				if last, _, _, err = r.answer(); err != nil {
					t.Fatalf("step %d: no answer: %v", i+1, err)
				}
			}
			if tc.hangUp {
				if !r.hungUp() {
					t.Fatal("the server did not hang up")
				}
			} else {
				if last, _, _, err = r.answer(); err != nil {
					t.Fatalf("no answer to the last step: %v", err)
				}
				if !strings.ContainsRune(tc.want, rune(last)) {
					t.Fatalf("answer %q, want one of %q", last, tc.want)
				}
			}
		})
	}

	// The healthy session goes on where it was.
	good.send('R', cstr("<rcpt@healthy.example>"))
	if code, _, _, err := good.answer(); err != nil || code != 'c' {
		t.Fatalf("healthy session after the bad ones: RCPT answered %q, %v", code, err)
	}
	good.send('E')
	if code, _, _, err := good.answer(); err != nil || code != 'a' {
		t.Fatalf("healthy session after the bad ones: end of message answered %q, %v", code, err)
	}
	// And a new session from the bad address is served.
	fresh := h.dial()
	fresh.negotiate()
	if code := fresh.connect(badIP); code != 'c' {
		t.Fatalf("new session from %s after the bad ones: connect answered %q", badIP, code)
	}
	fresh.c.Close()
	good.send('Q')
	good.c.Close()
	h.waitSessions(0)
	h.checkNoPanics()
}

// TestIdleConnectionsAreClosed: a peer that goes silent — before
// negotiating, or mid-session — is cut off after idle_timeout, and its
// slot is released.
func TestIdleConnectionsAreClosed(t *testing.T) {
	const idle = 300 * time.Millisecond
	h := newHostileServer(t, smtp.ModeEnforce, idle, hostileRules()...)
	silent := h.dial() // says nothing at all
	mid := h.dial()
	mid.negotiate()
	if code := mid.connect("198.51.100.7"); code != 'c' {
		t.Fatalf("connect answered %q", code)
	}
	h.waitSessions(2)
	start := time.Now()
	for _, r := range []*rawConn{silent, mid} {
		if !r.hungUp() {
			t.Fatal("a silent connection was not closed")
		}
	}
	if took := time.Since(start); took < idle/2 {
		t.Errorf("silent connections closed after %v, before the idle timeout of %v", took, idle)
	}
	h.waitSessions(0)
	again := h.dial()
	again.negotiate()
	if code := again.connect("198.51.100.7"); code != 'c' {
		t.Fatalf("the slot of a connection closed for silence was not released: connect answered %q", code)
	}
	h.checkNoPanics()
}

// hostileValues are client-written strings built to break a header or a
// log line, or to be too long.
var hostileValues = map[string]string{
	"CRLF":          "evil@example.org\r\nX-Injected: yes",
	"LF":            "evil@example.org\nBcc: victim@example.net",
	"CR":            "evil@example.org\rX-Injected: yes",
	"NUL":           "evil@exam\x00ple.org",
	"not UTF-8":     "\xff\xfe\xc3(@ex\x80ample.org",
	"escape codes":  "\x1b[31mred\x1b[0m@example.org\x7f",
	"C1 controls":   "a\u0085b\u009b@example.org",
	"10 KB":         strings.Repeat("a", 10*1024) + "@example.org",
	"10 KB of CRLF": strings.Repeat("\r\n", 5*1024) + "@example.org",
	"folding":       "a@example.org\r\n\tcontinued: line",
	"header-ish":    "X-Sluice-Limit: forged; key=sender:x",
}

// maxHeaderLine is RFC 5322's line limit, name included.
const maxHeaderLine = 998

// TestHostileValuesInHeadersRepliesAndLogs sends each hostile value as
// HELO, sender and recipient, twice so that every rule is crossed, and
// checks every header sluice adds, every reply it gives and every log
// line it writes: one line, valid UTF-8, no control characters, bounded.
func TestHostileValuesInHeadersRepliesAndLogs(t *testing.T) {
	for _, mode := range []smtp.Mode{smtp.ModeTag, smtp.ModeEnforce} {
		t.Run(mode.String(), func(t *testing.T) {
			h := newHostileServer(t, mode, 0, hostileRules()[1:]...)
			n, headers, replies := 0, 0, 0
			for name, v := range hostileValues {
				n++
				ip := fmt.Sprintf("192.0.2.%d", n)
				r := h.dial()
				r.negotiate()
				if code := r.connect(ip); code != 'c' {
					t.Fatalf("%s: connect answered %q", name, code)
				}
				r.send('H', cstr(v))
				if code, _, _, err := r.answer(); err != nil || code != 'c' {
					t.Fatalf("%s: HELO answered %q, %v", name, code, err)
				}
				for i := 0; i < 2; i++ {
					r.send('D', []byte{'M'}, cstr("i", "Q"+v, "{auth_authen}", v))
					r.send('M', cstr("<"+v+">", "SIZE=100"))
					code, data, _, err := r.answer()
					if err != nil {
						t.Fatalf("%s: MAIL: %v", name, err)
					}
					replies += checkReply(t, name, code, data)
					if code == 'c' {
						r.send('R', cstr("<"+v+">"))
						code, data, _, err = r.answer()
						if err != nil {
							t.Fatalf("%s: RCPT: %v", name, err)
						}
						replies += checkReply(t, name, code, data)
					}
					if code == 'c' {
						// A NUL ends the value: the protocol has no way
						// to send one in a header field.
						hv, _, _ := strings.Cut(v, "\x00")
						r.send('L', cstr("Subject", hv))
						r.answer()
						r.send('N')
						r.answer()
						r.send('E')
						code, data, mods, err := r.answer()
						if err != nil {
							t.Fatalf("%s: end of message: %v", name, err)
						}
						replies += checkReply(t, name, code, data)
						for _, m := range mods {
							headers += checkModification(t, name, m)
						}
					}
					r.send('A')
				}
				r.send('Q')
				r.c.Close()
			}
			h.waitSessions(0)
			lines := checkLogLines(t, h.json.String())
			if mode == smtp.ModeTag && headers < len(hostileValues) {
				t.Errorf("%d headers added for %d hostile values: the test did not reach the tags", headers, len(hostileValues))
			}
			if mode == smtp.ModeEnforce && replies < len(hostileValues) {
				t.Errorf("%d refusals for %d hostile values: the test did not reach the replies", replies, len(hostileValues))
			}
			t.Logf("%d headers, %d replies, %d log lines checked", headers, replies, lines)
			h.checkNoPanics()
		})
	}
}

// checkReply checks an SMTP reply sluice gave: one line of printable
// ASCII within SMTP's 512-octet limit.
// It returns 1 when there was a reply to check.
func checkReply(t *testing.T, name string, code byte, data []byte) int {
	t.Helper()
	if code != 'y' {
		return 0
	}
	text := strings.TrimSuffix(string(data), "\x00")
	if len(text) > 510 {
		t.Errorf("%s: reply of %d bytes", name, len(text))
	}
	for i := 0; i < len(text); i++ {
		if c := text[i]; c < 0x20 || c > 0x7e {
			t.Errorf("%s: reply has byte %#x at %d: %q", name, c, i, text)
			break
		}
	}
	if len(text) < 4 || (text[0] != '4' && text[0] != '5') || text[3] != ' ' {
		t.Errorf("%s: reply %q is not an SMTP reply", name, text)
	}
	return 1
}

// checkModification checks a header modification: a field name and a
// value that stays one line of valid UTF-8 without control characters.
// It returns 1 when m added a header with a value.
func checkModification(t *testing.T, name string, m []byte) int {
	t.Helper()
	code, data := m[0], m[1:]
	if code == 'm' || code == 'i' {
		data = data[4:] // the header index
	}
	if code != 'h' && code != 'm' && code != 'i' {
		return 0
	}
	parts := bytes.Split(bytes.TrimSuffix(data, []byte{0}), []byte{0})
	if len(parts) != 2 {
		t.Errorf("%s: header modification %q has %d parts", name, data, len(parts))
		return 0
	}
	field, value := string(parts[0]), string(parts[1])
	if field == "" || strings.ContainsFunc(field, func(r rune) bool { return r <= ' ' || r >= 0x7f || r == ':' }) {
		t.Errorf("%s: header name %q", name, field)
	}
	if len(field)+2+len(value) > maxHeaderLine {
		t.Errorf("%s: header %s of %d bytes", name, field, len(field)+2+len(value))
	}
	if !utf8.ValidString(value) {
		t.Errorf("%s: header %s value is not UTF-8: %q", name, field, value)
	}
	for _, c := range value {
		if c < 0x20 || c == 0x7f || c >= 0x80 && c < 0xa0 {
			t.Errorf("%s: header %s value has %U: %q", name, field, c, value)
			break
		}
	}
	if code == 'h' && value != "" {
		return 1
	}
	return 0
}

// checkLogLines checks every JSON log line: it parses, it is bounded, and
// no client-written value in it carries control characters once decoded.
func checkLogLines(t *testing.T, out string) int {
	t.Helper()
	n := 0
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if line == "" {
			continue
		}
		n++
		if len(line) > 4096 {
			t.Errorf("log line of %d bytes: %.200s...", len(line), line)
		}
		var fields map[string]any
		if err := json.Unmarshal([]byte(line), &fields); err != nil {
			t.Errorf("log line is not one JSON object: %v: %.200s", err, line)
			continue
		}
		for k, v := range fields {
			s, ok := v.(string)
			if !ok || k == "stack" {
				continue
			}
			if len(s) > maxLogValue+8 && k != "msg" && k != "error" {
				t.Errorf("log field %s of %d bytes", k, len(s))
			}
			for _, c := range s {
				if c < 0x20 && c != '\t' || c == 0x7f || c >= 0x80 && c < 0xa0 {
					t.Errorf("log field %s has %U: %q", k, c, s)
					break
				}
			}
		}
	}
	return n
}
