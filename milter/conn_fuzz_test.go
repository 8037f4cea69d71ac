package milter

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
)

// readerConn is a net.Conn whose read side is r; nothing else is used.
type readerConn struct {
	net.Conn
	r io.Reader
}

func (c readerConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// passThrough reads in through a conn with the given caps, chunk bytes at
// a time, and returns what the library above would have read and the cap
// that cut the stream ("" when it ran to its end).
func passThrough(t testing.TB, in []byte, cs caps, chunk int) (out []byte, cut string) {
	t.Helper()
	c := newConn(readerConn{r: bytes.NewReader(in)}, 0, nil)
	c.caps = cs
	c.onCut = func(_ *conn, reason string, n, limit int64) {
		if cut != "" {
			t.Fatalf("cut twice: %s, then %s", cut, reason)
		}
		if reason != "packet_length" && reason != cutMalformed && n <= limit {
			t.Fatalf("cut for %s at %d, not over the limit of %d", reason, n, limit)
		}
		cut = reason
	}
	buf := make([]byte, chunk)
	for {
		n, err := c.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("read: %v", err)
			}
			return out, cut
		}
		if n == 0 {
			t.Fatal("a read returned nothing and no error")
		}
	}
}

// holdings follows what a milter library and the session may hold of a
// stream of packets, as the caps define it: a message's headers until an
// Abort or the next MAIL, and the latest macro packet of each stage.
type holdings struct {
	headers int64
	macros  map[byte]int64
}

// add takes one whole packet and reports the cap it crosses, if any.
func (h *holdings) add(p []byte, cs caps) string {
	n := binary.BigEndian.Uint32(p)
	if n == 0 || n > maxPacket {
		return "packet_length"
	}
	switch p[4] {
	case 'L':
		h.headers += int64(len(p)) + 2*entryCost
		if h.headers > cs.header {
			return "header_bytes"
		}
	case 'A', 'M':
		h.headers = 0
	case 'K':
		h.headers = 0
		clear(h.macros)
	case 'D':
		var stage byte
		cost := int64(len(p))
		if len(p) > 5 {
			stage = p[5]
			cost += entryCost * int64(bytes.Count(p[6:], []byte{0})+1)
		}
		sum := cost
		for s, n := range h.macros {
			if s != stage {
				sum += n
			}
		}
		if sum > cs.macro {
			return "macro_bytes"
		}
		h.macros[stage] = cost
	}
	switch p[4] {
	case 'C', 'M', 'R':
		if malformed(p) {
			return cutMalformed
		}
	}
	return ""
}

// malformed reports whether a CONNECT, MAIL or RCPT packet lacks the NUL
// after its first string, or a CONNECT its address family.
func malformed(p []byte) bool {
	i := bytes.IndexByte(p[5:], 0)
	return i < 0 || p[4] == 'C' && 5+i+1 == len(p)
}

// nextPacket splits the first packet off b; ok is false when b does not
// hold a whole one.
func nextPacket(b []byte) (p, rest []byte, ok bool) {
	if len(b) < 4 {
		return nil, b, false
	}
	size := 4 + int(binary.BigEndian.Uint32(b))
	if size == 4 || len(b) < size {
		return nil, b, false
	}
	return b[:size], b[size:], true
}

// checkPassThrough checks what a conn handed on from in against what the
// caps promise: the input, in order, unchanged; no packet handed on
// crosses a cap or is malformed; and a cut comes only where the next
// packet would.
func checkPassThrough(t testing.TB, in, out []byte, cut string, cs caps) {
	t.Helper()
	h := holdings{macros: make(map[byte]int64)}
	rest := in
	for len(out) > 0 {
		p, more, ok := nextPacket(out)
		if !ok {
			// A packet cut short at the end of the input: handed on as is.
			if !bytes.Equal(out, rest) {
				t.Fatalf("handed on %q at the end, the input had %q left", out, rest)
			}
			if cut != "" {
				t.Fatalf("cut for %s after handing on a packet cut short", cut)
			}
			return
		}
		out = more
		if !bytes.HasPrefix(rest, p) {
			t.Fatalf("handed on %q, the input had %q", p, rest[:min(len(rest), 64)])
		}
		rest = rest[len(p):]
		if c := h.add(p, cs); c != "" {
			t.Fatalf("handed on a packet that crosses %s: %q", c, p[:min(len(p), 64)])
		}
	}
	if cut == "" {
		if len(rest) > 0 {
			t.Fatalf("the stream ended with no cut and %d bytes not handed on", len(rest))
		}
		return
	}
	// The packet not handed on must cross the cap named, as far as it
	// was read: a length, a header's length, a macro packet whole.
	if len(rest) < 4 {
		t.Fatalf("cut for %s with %q left", cut, rest)
	}
	n := binary.BigEndian.Uint32(rest)
	var want string
	switch {
	case n == 0 || n > maxPacket:
		want = "packet_length"
	case len(rest) < 5:
		t.Fatalf("cut for %s before the command byte", cut)
	case rest[4] == 'L':
		want = "header_bytes"
		if h.headers+int64(4+n)+2*entryCost <= cs.header {
			t.Fatalf("cut for %s a header that fits: %d bytes held", cut, h.headers)
		}
	case rest[4] == 'D':
		want = "macro_bytes"
		if p, _, ok := nextPacket(rest); ok {
			if h.add(p, cs) != want {
				t.Fatalf("cut for %s a macro packet that fits", cut)
			}
		} else if int64(4+n) <= cs.macro {
			t.Fatalf("cut for %s a macro packet cut short that fits", cut)
		}
	case rest[4] == 'C' || rest[4] == 'M' || rest[4] == 'R':
		want = cutMalformed
		if p, _, ok := nextPacket(rest); !ok || !malformed(p) {
			t.Fatalf("cut for %s a packet that is whole and well formed: %q", cut, rest[:min(len(rest), 64)])
		}
	default:
		t.Fatalf("cut for %s at command %q, which no cap counts", cut, rest[4])
	}
	if cut != want {
		t.Fatalf("cut for %s, want %s", cut, want)
	}
}

// stream joins packets into one stream.
func stream(packets ...[]byte) []byte { return bytes.Join(packets, nil) }

// FuzzConnFraming feeds any byte stream, read in chunks of any size,
// through the connection wrapper with small caps, and checks what it hands
// on against what the caps promise (checkPassThrough). The seeds are
// sessions as Postfix and Sendmail send them, and floods of headers and
// macros.
func FuzzConnFraming(f *testing.F) {
	postfix := stream(
		packet('O', make([]byte, 12)),
		packet('D', []byte{'C'}, cstr("j", "mx.example", "{daemon_name}", "smtpd")),
		packet('C', cstr("client.example"), []byte{'4', 0, 25}, cstr("192.0.2.1")),
		packet('D', []byte{'H'}), packet('H', cstr("helo.example")),
		packet('D', []byte{'M'}, cstr("i", "ABC")), packet('M', cstr("<a@example.org>")),
		packet('D', []byte{'R'}, cstr("{rcpt_addr}", "b@example.net")), packet('R', cstr("<b@example.net>")),
		packet('D', []byte{'L'}), packet('L', cstr("Subject", "hi")),
		packet('N'), packet('B', []byte("body\r\n")), packet('E'), packet('A'),
		packet('D', []byte{'M'}, cstr("i", "DEF")), packet('M', cstr("<c@example.org>")),
		packet('Q'))
	sendmail := stream(
		packet('O', make([]byte, 12)),
		packet('D', []byte{'M'}, cstr("i", "ABC")), packet('M', cstr("<a@example.org>")),
		packet('L', cstr("Subject", strings.Repeat("x", 3000))), packet('N'), packet('E'),
		packet('D', []byte{'M'}, cstr("i", "DEF")), packet('M', cstr("<c@example.org>")),
		packet('L', cstr("Subject", "y")), packet('E'), packet('M', cstr("<d@example.org>")))
	var headers, macros [][]byte
	for i := 0; i < 40; i++ {
		headers = append(headers, packet('L', cstr("X-Flood", strings.Repeat("h", 200))))
		macros = append(macros, cstr("k", "v"))
	}
	f.Add(postfix, uint8(7))
	f.Add(sendmail, uint8(0))
	f.Add(stream(headers...), uint8(255))
	f.Add(packet('D', []byte{'R'}, bytes.Join(macros, nil)), uint8(3))
	f.Add([]byte{0, 0, 0, 0}, uint8(1))
	f.Add([]byte{0, 0x10, 0, 1, 'L'}, uint8(1))
	f.Add([]byte{0, 0, 0, 9, 'D', 'C', 'a'}, uint8(2))
	cs := caps{header: 4096, macro: 1024}
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8) {
		out, cut := passThrough(t, in, cs, 1+int(chunk))
		checkPassThrough(t, in, out, cut, cs)
	})
}

// TestConnFraming runs the fuzz check on streams whose outcome is known:
// the MTAs' own sessions pass whole (Sendmail's, with no Abort between
// messages, too), each cap cuts where it should, and so does a packet
// go-milter would read past the end of.
func TestConnFraming(t *testing.T) {
	big := func(name string, n int) []byte { return packet('L', cstr(name, strings.Repeat("v", n))) }
	var rcpts [][]byte
	for i := 0; i < 1000; i++ {
		// 1,000 recipients, each with its macros: replaced, not piled up.
		rcpts = append(rcpts, packet('D', []byte{'R'}, cstr("{rcpt_addr}", strings.Repeat("r", 900))),
			packet('R', cstr("<r@example.net>")))
	}
	cs := caps{header: DefaultMaxHeaderBytes, macro: DefaultMaxMacroBytes}
	for _, tc := range []struct {
		name string
		in   []byte
		cut  string
	}{
		{name: "postfix", in: stream(packet('M', cstr("<a@x>")), big("A", 100_000), packet('E'), packet('A'),
			packet('D', []byte{'M'}, cstr("i", "Q")), packet('M', cstr("<b@x>")), big("B", 100_000), packet('E'), packet('A'))},
		{name: "sendmail, no abort between messages", in: stream(packet('M', cstr("<a@x>")), big("A", 900_000), packet('E'),
			packet('D', []byte{'M'}, cstr("i", "Q")), packet('M', cstr("<b@x>")), big("B", 900_000), packet('E'),
			packet('M', cstr("<c@x>")))},
		{name: "a new client on the connection (QUIT_NC)", in: stream(
			packet('D', []byte{'C'}, cstr("a", strings.Repeat("c", 200_000))), packet('K'),
			packet('D', []byte{'C'}, cstr("a", strings.Repeat("c", 200_000))))},
		{name: "MAIL without NUL", in: packet('M', []byte("<a@x>")), cut: cutMalformed},
		{name: "RCPT without NUL", in: stream(packet('M', cstr("<a@x>")), packet('R', []byte("<b@x>"))), cut: cutMalformed},
		{name: "CONNECT without a family", in: packet('C', cstr("host")), cut: cutMalformed},
		{name: "CONNECT of 4 KB without NUL", in: packet('C', []byte(strings.Repeat("h", 4096))), cut: cutMalformed},
		{name: "1000 recipients with macros", in: stream(rcpts...)},
		{name: "headers past the cap", in: stream(packet('M', cstr("<a@x>")), big("A", 600_000), big("B", 600_000)), cut: "header_bytes"},
		{name: "one macro packet past the cap", in: packet('D', []byte{'C'}, []byte(strings.Repeat("k\x00", 200_000))), cut: "macro_bytes"},
		{name: "macro stages past the cap together", in: stream(
			packet('D', []byte{'C'}, cstr("a", strings.Repeat("c", 150_000))),
			packet('D', []byte{'H'}, cstr("b", strings.Repeat("h", 150_000)))), cut: "macro_bytes"},
		{name: "packet over 1 MiB", in: []byte{0, 0x10, 0, 1, 'B'}, cut: "packet_length"},
		{name: "zero length", in: []byte{0, 0, 0, 0}, cut: "packet_length"},
		{name: "cut short", in: []byte{0, 0, 0, 9, 'M', '<'}},
		{name: "CONNECT bigger than the buffer, cut short", in: []byte{0, 0x0d, 0x30, 0x30, 'C', 'h'}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, chunk := range []int{1, 5, 4096, 1 << 20} {
				if chunk == 1 && len(tc.in) > 100_000 {
					continue
				}
				out, cut := passThrough(t, tc.in, cs, chunk)
				checkPassThrough(t, tc.in, out, cut, cs)
				if cut != tc.cut {
					t.Fatalf("chunks of %d: cut %q, want %q", chunk, cut, tc.cut)
				}
			}
		})
	}
}
