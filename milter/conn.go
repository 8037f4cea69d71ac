package milter

import (
	"bufio"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// conn is an MTA connection as go-milter sees it. It adds what go-milter
// lacks: a read deadline so a silent peer cannot pin a goroutine forever, a
// buffered reader (go-milter reads each packet header and body with separate
// calls), TCP_QUICKACK so that Sendmail, which writes a stage's macro and
// command packets separately, is not held up by delayed ACKs, and a hook
// that runs when the connection ends — go-milter has no close callback.
type conn struct {
	net.Conn
	r        *bufio.Reader
	idle     time.Duration
	raw      syscall.RawConn // TCP only, for TCP_QUICKACK
	once     sync.Once
	onClose  func()
	lastRead time.Time
}

// quickACK is "off" only in a benchmark build (go build -ldflags
// "-X sluice/milter.quickACK=off"), which measures what TCP_QUICKACK is
// worth to Sendmail; it is not a setting.
var quickACK = "on"

func newConn(c net.Conn, idle time.Duration, onClose func()) *conn {
	w := &conn{Conn: c, r: bufio.NewReaderSize(c, 2048), idle: idle, onClose: onClose}
	if tc, ok := c.(*net.TCPConn); ok {
		if quickACK != "off" {
			w.raw, _ = tc.SyscallConn()
		}
		_ = tc.SetKeepAlive(true)
	}
	return w
}

func (c *conn) Read(p []byte) (int, error) {
	if c.idle > 0 && c.r.Buffered() == 0 {
		// Setting a deadline costs a timer update; once per refill is enough.
		now := time.Now()
		if now.Sub(c.lastRead) > time.Second {
			_ = c.Conn.SetReadDeadline(now.Add(c.idle))
			c.lastRead = now
		}
	}
	n, err := c.r.Read(p)
	if c.raw != nil && n > 0 && c.r.Buffered() == 0 {
		// Linux leaves quick-ACK mode on its own; ask again after each read.
		_ = c.raw.Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK, 1)
		})
	}
	return n, err
}

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
