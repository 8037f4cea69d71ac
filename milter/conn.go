package milter

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// conn is an MTA connection as go-milter sees it. It adds what go-milter
// lacks: a read deadline so a silent peer cannot pin a goroutine forever, a
// buffered reader (go-milter reads each packet header and body with separate
// calls), TCP_QUICKACK so that Sendmail, which writes a stage's macro and
// command packets separately, is not held up by delayed ACKs, a hook
// that runs when the connection ends — go-milter has no close callback —
// and caps on what the MTA's packets may make the milter library keep.
//
// The caps live here, below the library, so that they hold whichever
// library reads the packets. conn follows the packet framing (a 4-byte
// big-endian length, then the command byte and the data) of what it hands
// on, and looks at each packet before the library sees any of it: a packet
// that would cross a cap is never handed on; the library sees the stream
// end cleanly between two packets, and closes the connection.
type conn struct {
	net.Conn
	r        *bufio.Reader
	idle     time.Duration
	raw      syscall.RawConn // TCP only, for TCP_QUICKACK
	once     sync.Once
	onClose  func()
	lastRead time.Time
	// waiting is since when sluice has been waiting for the MTA to send
	// (Unix ns), 0 while it has something to work on: a session in a
	// stage, a pause or a store call is not silent.
	waiting atomic.Int64
	// reclaimed is set, under Server.mu, when the connection was closed
	// to make room for a new one.
	reclaimed bool

	caps  caps
	onCut func(c *conn, reason string, n, limit int64)
	// The packet being handed on, and what to hand on before it.
	left int
	out  []byte
	err  error // once reading failed or a cap was crossed, every read fails
	// What the library may be holding.
	headers  int64 // header bytes since the last abort
	macros   []stageBytes
	macroSum int64
	client   string // the client address of the connect packet, for the log
}

// maxPacket is the longest packet handed on: the largest data size the
// milter protocol lets an MTA and a milter agree on (SMFIP_MDS_1M), and
// go-milter v0.5.0's own limit. (d--j/go-milter reads up to 512 MiB.)
const maxPacket = 1 << 20

// entryCost is what keeping one header or macro name or value costs the
// library and the session beyond its bytes (string headers, map entries):
// measured at 40 to 100 bytes with go-milter v0.5.0. It is counted against
// the caps, so that a flood of tiny entries is bounded like a few big ones.
const entryCost = 64

// caps bound what one connection may make the milter library hold.
type caps struct {
	header int64 // the headers of one message
	macro  int64 // the latest macro packet of each stage, all stages together
}

// stageBytes is what the latest macro packet of one stage counted.
type stageBytes struct {
	stage byte
	n     int64
}

// abortPacket is SMFIC_ABORT, which gets no reply.
var abortPacket = []byte{0, 0, 0, 1, 'A'}

// quickACK is "off" only in a benchmark build (go build -ldflags
// "-X sluice/milter.quickACK=off"), which measures what TCP_QUICKACK is
// worth to Sendmail; it is not a setting.
var quickACK = "on"

func newConn(c net.Conn, idle time.Duration, onClose func()) *conn {
	w := &conn{Conn: c, idle: idle, onClose: onClose, caps: caps{header: DefaultMaxHeaderBytes, macro: DefaultMaxMacroBytes}}
	w.r = bufio.NewReaderSize(socketReader{w}, 2048)
	if tc, ok := c.(*net.TCPConn); ok {
		if quickACK != "off" {
			w.raw, _ = tc.SyscallConn()
		}
		_ = tc.SetKeepAlive(true)
	}
	return w
}

// socketReader is what the buffer reads from: the socket itself.
type socketReader struct{ c *conn }

func (s socketReader) Read(p []byte) (int, error) {
	c := s.c
	now := time.Now()
	if c.idle > 0 && now.Sub(c.lastRead) > time.Second {
		// Setting a deadline costs a timer update; once a second is enough.
		_ = c.Conn.SetReadDeadline(now.Add(c.idle))
		c.lastRead = now
	}
	c.waiting.Store(now.UnixNano())
	n, err := c.Conn.Read(p)
	c.waiting.Store(0)
	if n > 0 && c.raw != nil {
		// Linux leaves quick-ACK mode on its own; ask again after each read.
		_ = c.raw.Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK, 1)
		})
	}
	return n, err
}

// Read hands on what the MTA sent, one packet at a time, each looked at
// before any of it is handed on.
func (c *conn) Read(p []byte) (int, error) {
	for len(c.out) == 0 && c.left == 0 {
		if c.err != nil {
			return 0, c.err
		}
		if err := c.frame(); err != nil {
			c.err = err
			return 0, err
		}
	}
	if len(c.out) > 0 {
		n := copy(p, c.out)
		c.out = c.out[n:]
		return n, nil
	}
	if len(p) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= n
	if err != nil {
		c.err = err
	}
	return n, err
}

// frame looks at the next packet: its length and command, and the data of
// the packets the caps need to see whole. It sets what Read hands on next,
// or returns the error that ends the stream.
func (c *conn) frame() error {
	hdr, err := c.r.Peek(4)
	if len(hdr) == 4 {
		// A zero length has no command byte to wait for.
		if n := binary.BigEndian.Uint32(hdr); n == 0 || n > maxPacket {
			return c.cut("packet_length", int64(n), maxPacket)
		}
		hdr, err = c.r.Peek(5)
	}
	if len(hdr) < 5 {
		if len(hdr) == 0 {
			return err
		}
		c.left = len(hdr) // cut short: the library reports it as it would
		return nil
	}
	n := binary.BigEndian.Uint32(hdr)
	size := 4 + int(n)
	c.left = size
	switch hdr[4] {
	case 'L':
		c.headers += int64(size) + 2*entryCost
		if c.headers > c.caps.header {
			return c.cut("header_bytes", c.headers, c.caps.header)
		}
	case 'A':
		c.headers = 0
	case 'M':
		c.newMessage()
	case 'D':
		return c.macro(size)
	case 'C':
		c.connect(size)
	}
	return nil
}

// newMessage starts a transaction. Sendmail sends no Abort after a message
// that reached its end, but go-milter v0.5.0 keeps a message's headers
// until an Abort: without one, every message of the connection would pile
// up. When headers are held, an Abort (which has no reply) goes first, as
// Postfix would have sent it.
func (c *conn) newMessage() {
	if c.headers > 0 {
		c.headers = 0
		c.out = append(c.out, abortPacket...)
	}
}

// macro looks at a macro packet whole: each stage's latest packet, with
// entryCost per name and value, counts against the macro cap.
func (c *conn) macro(size int) error {
	if int64(size) > c.caps.macro {
		return c.cut("macro_bytes", int64(size), c.caps.macro)
	}
	var b []byte
	whole := size > c.r.Size()
	if whole {
		// Bigger than the buffer: read it here (at most the cap) and hand it on from out.
		b = make([]byte, size)
		if n, err := io.ReadFull(c.r, b); err != nil {
			c.left, c.out, c.err = 0, b[:n], err
			return nil
		}
	} else if b, _ = c.r.Peek(size); len(b) < size {
		return nil // cut short: hand on what there is
	}
	var stage byte
	cost := int64(size)
	if size > 5 {
		stage = b[5]
		cost += entryCost * int64(bytes.Count(b[6:], []byte{0})+1)
	}
	i := len(c.macros)
	for j, s := range c.macros {
		if s.stage == stage {
			i = j
			break
		}
	}
	others := c.macroSum
	if i < len(c.macros) {
		others -= c.macros[i].n
	}
	if others+cost > c.caps.macro {
		return c.cut("macro_bytes", others+cost, c.caps.macro)
	}
	if i == len(c.macros) {
		c.macros = append(c.macros, stageBytes{stage: stage})
	}
	c.macros[i].n = cost
	c.macroSum = others + cost
	if stage == 'M' {
		c.newMessage() // the Abort goes before the new transaction's macros
	}
	if whole {
		c.left, c.out = 0, append(c.out, b...)
	}
	return nil
}

// connect keeps the client address of a connect packet for the log line
// of a cut.
func (c *conn) connect(size int) {
	if size > c.r.Size() {
		return
	}
	b, _ := c.r.Peek(size)
	if len(b) < size {
		return
	}
	data := b[5:]
	_, rest, ok := bytes.Cut(data, []byte{0}) // the host name
	if !ok || len(rest) == 0 {
		return
	}
	family, rest := rest[0], rest[1:]
	if family == '4' || family == '6' {
		if len(rest) < 2 {
			return
		}
		rest = rest[2:]
	}
	addr, _, _ := bytes.Cut(rest, []byte{0})
	c.client = string(addr[:min(len(addr), 64)])
}

// cut ends the stream for the library, which closes the connection.
func (c *conn) cut(reason string, n, limit int64) error {
	if c.onCut != nil {
		c.onCut(c, reason, n, limit)
	}
	return errCut
}

// errCut reads as the end of the stream: go-milter closes the connection
// on it without a log line of its own; the cut was logged already.
var errCut = io.EOF

func (c *conn) Write(p []byte) (int, error) {
	if c.idle > 0 {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(c.idle))
	}
	return c.Conn.Write(p)
}

// Close ends the connection and runs the close hook once. go-milter calls
// it from the session's own goroutine when the MTA hangs up or a packet is
// malformed.
func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		if c.onClose != nil {
			c.onClose()
		}
	})
	return err
}

// oneConn is a listener that yields one connection and then reports itself
// done. Handing each accepted connection to its own go-milter Server makes
// that server's NewMilter return this connection's session every time —
// including after the responses that make go-milter replace its backend —
// so session state can never cross connections.
type oneConn struct {
	c    net.Conn
	done bool
}

var errOneConnDone = errors.New("milter: connection handed over")

func (l *oneConn) Accept() (net.Conn, error) {
	if l.done {
		return nil, errOneConnDone
	}
	l.done = true
	return l.c, nil
}

func (l *oneConn) Close() error   { return nil }
func (l *oneConn) Addr() net.Addr { return l.c.LocalAddr() }
