package milter

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"testing"
)

// postfixMessages is what Postfix sends a milter for n messages on one
// connection, every event negotiated: the stream the benchmarks read.
func postfixMessages(n int) []byte {
	var ps [][]byte
	ps = append(ps, packet('O', make([]byte, 12)),
		packet('D', []byte{'C'}, cstr("j", "mx.example.test", "{daemon_name}", "smtpd", "{client_addr}", "192.0.2.1")),
		packet('C', cstr("client.example"), []byte{'4', 0, 25}, cstr("192.0.2.1")),
		packet('D', []byte{'H'}), packet('H', cstr("client.example")))
	for i := 0; i < n; i++ {
		ps = append(ps, packet('D', []byte{'M'}, cstr("i", "4ABC", "{auth_authen}", "", "{mail_addr}", "a@example.org")),
			packet('M', cstr("<a@example.org>")),
			packet('D', []byte{'R'}, cstr("i", "4ABC", "{rcpt_addr}", "b@example.net")), packet('R', cstr("<b@example.net>")))
		for _, h := range []string{"Received", "From", "To", "Subject", "Date", "Message-ID"} {
			ps = append(ps, packet('D', []byte{'L'}), packet('L', cstr(h, "a value of some sixty bytes, as headers of mail often are")))
		}
		ps = append(ps, packet('D', []byte{'N'}), packet('N'), packet('D', []byte{'B'}), packet('B', bytes.Repeat([]byte("body line\r\n"), 20)),
			packet('D', []byte{'E'}, cstr("i", "4ABC")), packet('E'), packet('A'))
	}
	return stream(ps...)
}

// readPackets reads r the way go-milter does: the length, then the rest,
// and returns the packets read.
func readPackets(b *testing.B, r io.Reader) int {
	var hdr [4]byte
	buf := make([]byte, 0, 4096)
	n := 0
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if err == io.EOF {
				return n
			}
			b.Fatal(err)
		}
		l := int(binary.BigEndian.Uint32(hdr[:]))
		if cap(buf) < l {
			buf = make([]byte, l)
		}
		if _, err := io.ReadFull(r, buf[:l]); err != nil {
			b.Fatal(err)
		}
		n++
	}
}

// BenchmarkConnRead reads 10 messages of a Postfix session through the
// connection wrapper (framing and caps) and, as the baseline measured in
// the same run, through a plain buffered reader as sluice read before the
// caps.
func BenchmarkConnRead(b *testing.B) {
	in := postfixMessages(10)
	b.Run("buffered", func(b *testing.B) {
		b.SetBytes(int64(len(in)))
		for i := 0; i < b.N; i++ {
			readPackets(b, bufio.NewReaderSize(bytes.NewReader(in), 2048))
		}
	})
	b.Run("conn", func(b *testing.B) {
		b.SetBytes(int64(len(in)))
		for i := 0; i < b.N; i++ {
			c := newConn(readerConn{r: bytes.NewReader(in)}, 0, nil)
			readPackets(b, c)
		}
	})
}
