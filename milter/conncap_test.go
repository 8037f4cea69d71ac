package milter

// What one MTA connection may make sluice hold: headers and macros are
// capped per message below go-milter, which keeps the macros of each
// stage and hands each header field to the session (which keeps what it
// needs of them: names to remove forged fields, the header for DKIM).

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"sluice/policy"
)

// heapAlloc is the live heap after a full collection.
func heapAlloc() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// heapBound is what one hostile connection may add to the heap in these
// tests: the default caps (1 MiB of headers, 256 KiB of macros, counted
// with their bookkeeping) and one packet in flight, with room to spare.
const heapBound = 8 << 20

// checkCut checks that the server logged one cut, for cap, of the
// connection from client, and counted it; and that go-milter, which sees
// the stream end between two packets, logged nothing of its own.
func (h *hostileServer) checkCut(t *testing.T, cap, client string, n int) {
	t.Helper()
	lines := h.logs.FilterMessage("MTA connection closed: over a cap").All()
	if len(lines) != n {
		t.Fatalf("%d log lines of a cut, want %d", len(lines), n)
	}
	for _, l := range lines {
		f := l.ContextMap()
		if f["cap"] != cap || (client != "" && f["client_ip"] != client) {
			t.Errorf("cut logged as %v, want cap %s, client_ip %s", f, cap, client)
		}
		if b, lim := f["bytes"].(int64), f["limit"].(int64); b <= lim {
			t.Errorf("cut logged at %d bytes, not over the limit of %d", b, lim)
		}
	}
	if got := h.conns.cuts(cap); got != n {
		t.Errorf("%d cuts for %s counted, want %d", got, cap, n)
	}
	if s := h.stdlog.String(); s != "" {
		t.Errorf("go-milter logged:\n%s", s)
	}
}

// flood writes n packets on r, made by pkt, while reading the answers, and
// returns how many were answered and whether the server hung up. It
// returns once every packet was answered or the server hung up.
func (r *rawConn) flood(n int, pkt func(i int) []byte) (answered int, hungUp bool) {
	r.t.Helper()
	type result struct {
		answered int
		hungUp   bool
	}
	done := make(chan result, 1)
	go func() {
		var res result
		for res.answered < n {
			if _, _, err := r.read(10 * time.Second); err != nil {
				res.hungUp = !isTimeout(err)
				break
			}
			res.answered++
		}
		done <- res
	}()
	for i := 0; i < n; i++ {
		if r.write(pkt(i)) != nil {
			break // the server hung up
		}
	}
	res := <-done
	return res.answered, res.hungUp
}

// openHealthy starts a session that stays mid-transaction while a test
// attacks the server on other connections.
func (h *hostileServer) openHealthy(t *testing.T) *rawConn {
	t.Helper()
	good := h.dial()
	good.t = t
	good.negotiate()
	if code := good.connect("192.0.2.1"); code != 'c' {
		t.Fatalf("healthy session: connect answered %q", code)
	}
	good.send('M', cstr("<good@example.org>"))
	if code, _, _, err := good.answer(); err != nil || code != 'c' {
		t.Fatalf("healthy session: MAIL answered %q, %v", code, err)
	}
	return good
}

// finishHealthy checks that the healthy session goes on after an attack.
func finishHealthy(t *testing.T, good *rawConn) {
	t.Helper()
	good.send('R', cstr("<rcpt@healthy.example>"))
	if code, _, _, err := good.answer(); err != nil || code != 'c' {
		t.Fatalf("healthy session after the attack: RCPT answered %q, %v", code, err)
	}
	good.send('L', cstr("Subject", "still here"))
	good.send('N')
	good.send('E')
	// go-milter answers accept to sluice's continue at the end.
	for i, what := range []string{"header", "end of headers", "end of message"} {
		want := byte('c')
		if what == "end of message" {
			want = 'a'
		}
		if code, _, _, err := good.answer(); err != nil || code != want {
			t.Fatalf("healthy session after the attack: %s (%d) answered %q, %v", what, i, code, err)
		}
	}
}

// connected opens a session that negotiated and connected as ip.
func (h *hostileServer) connected(t *testing.T, ip string) *rawConn {
	t.Helper()
	r := h.dial()
	r.t = t
	r.negotiate()
	if code := r.connect(ip); code != 'c' {
		t.Fatalf("connect as %s: %q", ip, code)
	}
	return r
}

// TestHeaderFloodIsCutOff sends, in one message, header after header of
// 256 KB, and 200,000 headers of a few bytes each with a name of their
// own (what keeping each costs counts, not only its bytes). Up to the cap
// the connection is served and the heap holds what it was sent within
// heapBound; past it the server hangs up, logs and counts the cut once,
// and a session open meanwhile is served.
func TestHeaderFloodIsCutOff(t *testing.T) {
	value := strings.Repeat("a", 256<<10)
	for _, tc := range []struct {
		name        string
		header      func(i int) []byte
		held, flood int // headers sent before the heap is measured, then more
		maxAnswered int
		client      string
	}{
		{name: "256 KB headers", held: 3, flood: 128, maxAnswered: 4, client: "198.51.100.10",
			header: func(i int) []byte { return packet('L', cstr(fmt.Sprintf("X-Flood-%d", i), value)) }},
		{name: "tiny headers", held: 7000, flood: 200_000, maxAnswered: 8000, client: "198.51.100.11",
			header: func(i int) []byte { return packet('L', cstr(fmt.Sprintf("X%d", i), "")) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHostileServer(t, policy.ModeEnforce, 0)
			good := h.openHealthy(t)
			base := heapAlloc()
			r := h.connected(t, tc.client)
			r.send('M', cstr("<flood@example.org>"))
			if code, _, _, err := r.answer(); err != nil || code != 'c' {
				t.Fatalf("MAIL answered %q, %v", code, err)
			}
			if n, hungUp := r.flood(tc.held, tc.header); n != tc.held || hungUp {
				t.Fatalf("%d headers: %d answered, hung up %v", tc.held, n, hungUp)
			}
			held := heapAlloc() - base
			answered, hungUp := r.flood(tc.flood, func(i int) []byte { return tc.header(tc.held + i) })
			answered += tc.held
			grew := heapAlloc() - base
			t.Logf("heap grew by %.1f MB with %d headers held; %d of %d answered in all; then by %.1f MB",
				float64(held)/(1<<20), tc.held, answered, tc.held+tc.flood, float64(grew)/(1<<20))
			if held > heapBound {
				t.Errorf("heap grew by %d bytes with %d headers held, want at most %d", held, tc.held, heapBound)
			}
			if !hungUp {
				t.Errorf("the server did not hang up after %d headers in one message", answered)
			}
			if answered > tc.maxAnswered {
				t.Errorf("%d headers answered, want at most %d under the 1 MiB cap", answered, tc.maxAnswered)
			}
			if grew > heapBound {
				t.Errorf("heap grew by %d bytes with the attacking connection open, want at most %d", grew, heapBound)
			}
			r.c.Close()
			finishHealthy(t, good)
			h.checkCut(t, "header_bytes", tc.client, 1)
			h.checkNoPanics()
		})
	}
}

// TestHeadersOfManyMessagesWithoutAbort sends 32 messages of 768 KB of
// headers each on one connection, Sendmail's way: no Abort between
// messages. Each message is within the cap, so the connection is served to
// the end; and what is kept of one message's headers must not pile up
// across messages.
func TestHeadersOfManyMessagesWithoutAbort(t *testing.T) {
	h := newHostileServer(t, policy.ModeEnforce, 0)
	base := heapAlloc()
	r := h.connected(t, "198.51.100.12")
	value := strings.Repeat("b", 256<<10)
	const messages = 32
	for m := 0; m < messages; m++ {
		steps := [][]byte{
			packet('D', []byte{'M'}, cstr("i", fmt.Sprintf("Q%d", m))),
			packet('M', cstr(fmt.Sprintf("<m%d@example.org>", m))),
			packet('R', cstr("<rcpt@example.net>")),
		}
		for i := 0; i < 3; i++ {
			steps = append(steps, packet('L', cstr(fmt.Sprintf("X-Big-%d", i), value)))
		}
		steps = append(steps, packet('N'), packet('E'))
		for _, p := range steps {
			if err := r.write(p); err != nil {
				t.Fatalf("message %d: %v", m, err)
			}
			if p[4] == 'D' {
				continue
			}
			want := byte('c')
			if p[4] == 'E' {
				want = 'a'
			}
			if code, _, _, err := r.answer(); err != nil || code != want {
				t.Fatalf("message %d: %q answered %q, %v", m, p[4], code, err)
			}
		}
	}
	grew := heapAlloc() - base
	t.Logf("%d messages of 768 KB of headers, no Abort: heap grew by %.1f MB", messages, float64(grew)/(1<<20))
	if grew > heapBound {
		t.Errorf("heap grew by %d bytes over %d messages on one open connection, want at most %d", grew, messages, heapBound)
	}
	r.send('Q')
	if !r.hungUp() {
		t.Error("no hang-up after QUIT")
	}
	h.checkCut(t, "header_bytes", "", 0)
	h.checkNoPanics()
}

// TestMacroFloodIsCutOff sends, on each of ten connections, one macro
// packet of 900 KB holding 150,000 names: each connection is closed before
// go-milter turns the packet into a map, the heap stays bounded while they
// are open, and a session open meanwhile is served.
func TestMacroFloodIsCutOff(t *testing.T) {
	h := newHostileServer(t, policy.ModeEnforce, 0)
	good := h.openHealthy(t)
	var macros []byte
	for i := 0; len(macros) < 900_000; i++ {
		macros = append(macros, cstr(fmt.Sprintf("%x", i), "")...)
	}
	base := heapAlloc()
	const conns = 10
	var rs []*rawConn
	for i := 0; i < conns; i++ {
		r := h.dial()
		r.t = t
		r.negotiate()
		r.send('D', []byte{'C'}, macros)
		port := []byte{0x61, 0xa8}
		r.send('C', cstr("client.example"), []byte{'4'}, port, cstr(fmt.Sprintf("198.51.100.%d", 20+i)))
		rs = append(rs, r)
	}
	hungUp := 0
	for _, r := range rs {
		// The connect is answered (no cap) or the connection is closed.
		if _, _, _, err := r.answer(); err != nil && !isTimeout(err) {
			hungUp++
		}
	}
	grew := heapAlloc() - base
	t.Logf("%d of %d connections with a 900 KB macro packet closed; heap grew by %.1f MB", hungUp, conns, float64(grew)/(1<<20))
	if hungUp != conns {
		t.Errorf("%d of %d connections that sent a 900 KB macro packet were closed", hungUp, conns)
	}
	if grew > heapBound {
		t.Errorf("heap grew by %d bytes with %d macro floods open, want at most %d", grew, conns, heapBound)
	}
	for _, r := range rs {
		r.c.Close()
	}
	finishHealthy(t, good)
	h.checkCut(t, "macro_bytes", "", conns)
	h.checkNoPanics()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
