package milter

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// conn is an MTA connection as go-milter sees it. It adds what go-milter
// lacks: a read deadline so a silent peer cannot pin a goroutine forever
// (go-milter sets none after negotiation), a buffered reader (go-milter
// reads each packet header and body with separate calls), TCP_QUICKACK so
// that Sendmail, which writes a stage's macro and command packets
// separately, is not held up by delayed ACKs, a hook that runs when the
// connection ends — for the server's count of open connections, which
// includes those that never got past negotiation — and caps on what the
// MTA's packets may make the milter library and the session keep.
//
// The caps live here, below the library, so that they hold whichever
// library reads the packets. conn follows the packet framing (a 4-byte
// big-endian length, then the command byte and the data) of what it hands
// on, and looks at each packet before the library sees any of it: a packet
// that would cross a cap, or that go-milter v0.10.1 would read past its
// end (a CONNECT, MAIL or RCPT without the NUL after its first string), is
// never handed on; the library sees the stream end cleanly between two
// packets, and closes the connection.
type conn struct {
	net.Conn
	r        *bufio.Reader
	idle     time.Duration
	raw      syscall.RawConn // TCP only, for TCP_QUICKACK
	once     sync.Once
	onClose  func()
	lastRead time.Time // when the read deadline was last set; zero: set it at the next read
	deadline time.Time // the library's read deadline, if any
	armed    bool      // a read deadline is set on the socket
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
	// What the library and the session may be holding.
	headers  int64 // header bytes of the message
	macros   []stageBytes
	macroSum int64
	client   string // the client address of the connect packet, for the log
	// held is a packet header written but not yet sent, then the packet
	// while it is sent; its array is kept for the next.
	held []byte
}

// maxPacket is the longest packet handed on: the largest data size the
// milter protocol lets an MTA and a milter agree on (SMFIP_MDS_1M).
// go-milter reads up to 512 MiB.
const maxPacket = 1 << 20

// entryCost is what keeping one header or macro name or value costs the
// library and the session beyond its bytes (strings, map entries). It is
// counted against the caps, so that a flood of tiny entries is bounded
// like a few big ones.
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
	if now.Sub(c.lastRead) > time.Second {
		// Setting a deadline costs a timer update; once a second is enough.
		var d time.Time
		if c.idle > 0 {
			d = now.Add(c.idle)
		}
		if !c.deadline.IsZero() && (d.IsZero() || c.deadline.Before(d)) {
			d = c.deadline
		}
		if !d.IsZero() || c.armed {
			_ = c.Conn.SetReadDeadline(d)
			c.armed = !d.IsZero()
		}
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

// SetReadDeadline takes the library's deadline (go-milter gives the MTA
// a second to negotiate, then clears it), to be set with the idle one at
// the next read: the earlier of the two holds.
func (c *conn) SetReadDeadline(t time.Time) error {
	c.deadline = t
	c.lastRead = time.Time{}
	return nil
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
	case 'A', 'M':
		// A new transaction, or the end of one: Sendmail sends no Abort
		// after a message that reached its end.
		c.headers = 0
	case 'K':
		// QUIT_NC: the MTA reuses the connection for a new client.
		c.headers, c.macros, c.macroSum = 0, c.macros[:0], 0
	case 'D':
		return c.macro(size)
	}
	switch hdr[4] {
	case 'C', 'M', 'R':
		return c.command(size)
	}
	return nil
}

// macro looks at a macro packet whole: each stage's latest packet, with
// entryCost per name and value, counts against the macro cap.
func (c *conn) macro(size int) error {
	if int64(size) > c.caps.macro {
		return c.cut("macro_bytes", int64(size), c.caps.macro)
	}
	b, whole := c.packet(size) // at most the cap
	if len(b) < size {
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
	if whole {
		c.left, c.out = 0, append(c.out, b...)
	}
	return nil
}

// command looks at a CONNECT, MAIL or RCPT packet whole: its first
// string (host name, sender, recipient) must end in a NUL, and a CONNECT
// must go on with the address family; go-milter reads past the end of
// the packet otherwise. A CONNECT's client address is kept for the log
// line of a cut.
func (c *conn) command(size int) error {
	b, whole := c.packet(size)
	if len(b) < size {
		return nil // cut short: hand on what there is
	}
	data := b[5:]
	_, rest, ok := bytes.Cut(data, []byte{0})
	if !ok || b[4] == 'C' && len(rest) == 0 {
		return c.malformed(b[4])
	}
	if b[4] == 'C' {
		c.client = ""
		family, rest := rest[0], rest[1:]
		if (family == '4' || family == '6') && len(rest) >= 2 {
			addr, _, _ := bytes.Cut(rest[2:], []byte{0})
			c.client = string(addr[:min(len(addr), 64)])
		}
	}
	if whole {
		c.left, c.out = 0, append(c.out, b...)
	}
	return nil
}

// packet returns the packet of size bytes about to be handed on: peeked
// in the buffer, or, when bigger than the buffer, read whole (whole is
// then true, and what was read must be handed on from out). A packet cut
// short by the end of the stream comes back short; what there is of it
// is handed on, so that the library reports it as it would.
func (c *conn) packet(size int) (b []byte, whole bool) {
	if size <= c.r.Size() {
		b, _ = c.r.Peek(size)
		return b, false
	}
	b = make([]byte, size)
	n, err := io.ReadFull(c.r, b)
	if err != nil {
		if err == io.ErrUnexpectedEOF {
			// The stream ended: the library, reading on, is told so.
			err = io.EOF
		}
		c.left, c.out, c.err = 0, b[:n], err
		return b[:n], true
	}
	return b, true
}

// malformed ends the stream at a packet go-milter cannot read safely.
func (c *conn) malformed(cmd byte) error {
	return c.cut(cutMalformed, int64(cmd), 0)
}

// cutMalformed is the reason of a cut at a malformed packet, which crossed
// no cap: n is then the packet's command byte.
const cutMalformed = "malformed"

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

// Write sends what go-milter writes, a whole packet at a time. go-milter
// writes a packet's length and command in one call and its data in
// another; sent as they come they are two segments, and the MTA wakes for
// the first only to find the packet incomplete and wait again. A header
// that announces data is held and goes out with the data, which go-milter
// always writes next, from the same goroutine.
func (c *conn) Write(p []byte) (int, error) {
	if len(c.held) == 0 && len(p) == packetHeader && binary.BigEndian.Uint32(p) > 1 {
		c.held = append(c.held, p...)
		return len(p), nil
	}
	if c.idle > 0 {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(c.idle))
	}
	if len(c.held) == 0 {
		return c.Conn.Write(p)
	}
	c.held = append(c.held, p...)
	n, err := c.Conn.Write(c.held)
	c.held = c.held[:0]
	return max(n-packetHeader, 0), err
}

// packetHeader is a packet's length and command byte.
const packetHeader = 5

// Close ends the connection and runs the close hook once. go-milter calls
// it from the session's own goroutine when the session ends, for whatever
// reason; it may not have got as far as making a session.
func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		if c.onClose != nil {
			c.onClose()
		}
	})
	return err
}

// handoff is the listener a go-milter server serves: the accept loop,
// which admits each connection under max_connections, hands it the
// connections that are to speak with its engine.
type handoff struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newHandoff() *handoff {
	return &handoff{conns: make(chan net.Conn), done: make(chan struct{})}
}

// give hands c to the go-milter server, or reports false when the
// listener was closed first.
func (h *handoff) give(c net.Conn) bool {
	select {
	case h.conns <- c:
		return true
	case <-h.done:
		return false
	}
}

func (h *handoff) Accept() (net.Conn, error) {
	select {
	case c := <-h.conns:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

func (h *handoff) Close() error {
	h.once.Do(func() { close(h.done) })
	return nil
}

// Addr is the handoff's own: connections come from every listener.
func (h *handoff) Addr() net.Addr { return handoffAddr{} }

type handoffAddr struct{}

func (handoffAddr) Network() string { return "handoff" }
func (handoffAddr) String() string  { return "sluice" }
