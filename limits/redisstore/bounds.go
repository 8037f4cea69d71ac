package redisstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
)

// go-redis believes the lengths a reply declares: it allocates a bulk
// string or an aggregate's elements from the header, before the bytes
// arrive (a bulk length of 2^62 panics in makeslice), and it recurses into
// nested aggregates (deep enough, the stack overflows, which no recover
// stops). Whoever answers on the Redis address — a local user binding the
// port while Redis is down, anyone on the path of a plain-TCP connection —
// could stop the daemon with a few bytes. So every connection reads
// through a scanner that follows the RESP stream and refuses a reply that
// declares more than these bounds, before go-redis sees its header.
//
// The store's own replies are small: a take script answers 6 integers per
// request (tens of them); the largest reply is Hot's HGETALL of the hot
// set, at most 10,000 names (hotKeys) of under 1 KB each with their
// parameters: about 20,000 elements and a few MB; exemptions grow with
// what admins set, about 100 bytes each. The bounds are ten times and
// more above that, and still keep what one reply can make a connection
// allocate to about 64 MiB and 16 MiB of element slots.
const (
	// maxReplyBytes bounds one top-level reply, bulk strings included: a
	// bulk string's declared length is checked against it at its header.
	maxReplyBytes = 64 << 20
	// maxPending bounds the elements that the open aggregates of a reply
	// have declared and not yet delivered: go-redis allocates a slot for
	// each at the header (16 bytes or more), so nested headers must not
	// multiply what a few bytes can make it allocate.
	maxPending = 1 << 20
	// maxDepth bounds the nesting of aggregates; the store's replies nest
	// two deep at most.
	maxDepth = 32
	// maxLine bounds a line: a status, an error, a number, a length
	// header. 64 KiB is Redis's own bound on an inline request.
	maxLine = 64 << 10
)

// ErrReplyRefused is wrapped by the error of a call whose reply broke the
// bounds above: the server is not Redis as sluice knows it, or it is
// hostile. The connection is closed.
var ErrReplyRefused = errors.New("redis reply refused")

// replyLimits are the bounds a scanner enforces; tests shrink them.
type replyLimits struct {
	bytes, pending int64
	depth, line    int
}

var defaultLimits = replyLimits{bytes: maxReplyBytes, pending: maxPending, depth: maxDepth, line: maxLine}

// What the scanner expects next.
const (
	atType = iota // the type byte of a value
	inLine        // the rest of a line, up to its '\n'
	inBulk        // a bulk string's bytes and their CRLF
)

// aggregate is an aggregate being read: how many elements it still
// expects, and whether it is an attribute (a RESP3 attribute is not an
// element of what holds it: it decorates the value after it).
type aggregate struct {
	left int64
	attr bool
}

// replyScanner follows a stream of RESP2 and RESP3 replies, chunk by
// chunk, whatever the chunks' boundaries, and reports the first thing
// that breaks its limits or RESP's framing. It reads each byte once and
// skips bulk strings without looking at them.
type replyScanner struct {
	lim    replyLimits
	state  uint8
	kind   byte  // type byte of the line being read
	line   int   // bytes of the line so far
	n      int64 // the length a header declares
	neg    bool  // the header's '-'
	digits int   // the header's digits so far
	cr     bool  // the line's last byte was '\r'
	skip   int64 // bytes of the bulk string (and CRLF) still to pass
	reply  int64 // bytes of the current top-level reply so far
	open   []aggregate
	attrs  int   // attributes among open
	pend   int64 // elements the open aggregates still expect
}

func newReplyScanner(lim replyLimits) *replyScanner { return &replyScanner{lim: lim} }

// scan follows p, the next bytes of the stream.
func (s *replyScanner) scan(p []byte) error {
	for len(p) > 0 {
		switch s.state {
		case inBulk:
			k := min(int64(len(p)), s.skip)
			s.skip -= k
			p = p[k:]
			if s.skip == 0 {
				s.state = atType
				s.done()
			}
		case atType:
			s.kind, p = p[0], p[1:]
			s.reply++
			switch s.kind {
			case '+', '-', ':', '_', ',', '#', '(', // RESP2 and RESP3 lines
				'$', '=', '!', '*', '~', '>', '%', '|': // length headers
			default:
				return fmt.Errorf("unknown reply type byte %q", s.kind)
			}
			s.state, s.line, s.n, s.neg, s.digits, s.cr = inLine, 0, 0, false, 0, false
		case inLine:
			i := bytes.IndexByte(p, '\n')
			seg := p
			if i >= 0 {
				seg = p[:i]
			}
			if s.line+len(seg) > s.lim.line {
				return fmt.Errorf("a %q line longer than %d bytes", s.kind, s.lim.line)
			}
			if s.header() {
				if err := s.digitsOf(seg); err != nil {
					return err
				}
			}
			if len(seg) > 0 {
				s.cr = seg[len(seg)-1] == '\r'
			}
			s.line += len(seg)
			s.reply += int64(len(seg))
			if i < 0 {
				return nil
			}
			p = p[i+1:]
			s.reply++
			if err := s.endLine(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *replyScanner) header() bool {
	switch s.kind {
	case '$', '=', '!', '*', '~', '>', '%', '|':
		return true
	}
	return false
}

// digitsOf parses the part of a length header in seg: "-1" or digits,
// then '\r'. It stops at the first digit that takes the number above its
// limit, so that a header of endless digits costs nothing.
func (s *replyScanner) digitsOf(seg []byte) error {
	for j, c := range seg {
		switch {
		case c == '-' && s.line+j == 0:
			s.neg = true
		case c >= '0' && c <= '9' && !s.cr:
			s.digits++
			s.n = s.n*10 + int64(c-'0')
			if s.bulk() && s.n > s.lim.bytes {
				return fmt.Errorf("a %q header declares more than %d bytes, the most a reply may hold", s.kind, s.lim.bytes)
			}
			if !s.bulk() && s.n > s.lim.pending {
				return fmt.Errorf("a %q header declares more than %d elements, the most a reply may have pending", s.kind, s.lim.pending)
			}
		case c == '\r' && j == len(seg)-1 && !s.cr:
			// The end of the line, when '\n' follows.
		default:
			return fmt.Errorf("a %q header that is not a length", s.kind)
		}
	}
	return nil
}

func (s *replyScanner) bulk() bool { return s.kind == '$' || s.kind == '=' || s.kind == '!' }

// endLine acts on a complete line.
func (s *replyScanner) endLine() error {
	if !s.cr {
		return fmt.Errorf("a %q line that does not end in CRLF", s.kind)
	}
	if s.reply > s.lim.bytes {
		return fmt.Errorf("a reply longer than %d bytes", s.lim.bytes)
	}
	s.state = atType
	if !s.header() {
		s.done()
		return nil
	}
	n := s.n
	if s.digits == 0 || s.neg && n != 1 {
		return fmt.Errorf("a %q header that is not a length", s.kind)
	}
	if s.neg { // a null
		if s.kind != '|' {
			s.done()
		}
		return nil
	}
	if s.bulk() {
		if s.reply+n+2 > s.lim.bytes {
			return fmt.Errorf("a bulk string of %d bytes in a reply of %d bytes so far, above the %d a reply may hold", n, s.reply, s.lim.bytes)
		}
		s.state, s.skip = inBulk, n+2
		s.reply += n + 2
		return nil
	}
	if s.kind == '%' || s.kind == '|' {
		n *= 2 // key and value
	}
	attr := s.kind == '|'
	if attr && s.attrs > 0 {
		// go-redis skips an attribute by counting what it holds, and
		// counts an attribute inside it as an element: the stream would
		// mean one thing to it and another to this scanner.
		return errors.New("an attribute inside an attribute")
	}
	if len(s.open) >= s.lim.depth {
		return fmt.Errorf("aggregates nested more than %d deep", s.lim.depth)
	}
	if s.pend+n > s.lim.pending {
		return fmt.Errorf("a %q header of %d elements where %d are pending, above the %d a reply may have pending", s.kind, n, s.pend, s.lim.pending)
	}
	if n == 0 {
		if !attr {
			s.done()
		}
		return nil
	}
	s.open = append(s.open, aggregate{left: n, attr: attr})
	s.pend += n
	if attr {
		s.attrs++
	}
	return nil
}

// done counts a complete value as an element of the aggregates it
// completes, innermost first; the end of a top-level reply starts the
// count of bytes again.
func (s *replyScanner) done() {
	for len(s.open) > 0 {
		top := &s.open[len(s.open)-1]
		top.left--
		s.pend--
		if top.left > 0 {
			return
		}
		attr := top.attr
		s.open = s.open[:len(s.open)-1]
		if attr {
			s.attrs--
			return // it decorates the value that follows
		}
	}
	s.reply = 0
}

// boundedConn is a connection to Redis whose replies are scanned before
// go-redis reads them. The first reply that breaks the bounds closes the
// connection: every read after it fails with the same error.
type boundedConn struct {
	net.Conn
	scan    *replyScanner
	addr    string
	refused func(error)
	err     error
}

func (c *boundedConn) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		if serr := c.scan.scan(p[:n]); serr != nil {
			c.err = fmt.Errorf("%w from %s: %v", ErrReplyRefused, c.addr, serr)
			c.Conn.Close()
			if c.refused != nil {
				c.refused(c.err)
			}
			return 0, c.err
		}
	}
	return n, err
}

// boundedSyscallConn is a boundedConn over a plain TCP connection: go-redis
// peeks at the socket of an idle connection to find one the server
// closed, which needs the descriptor.
type boundedSyscallConn struct{ *boundedConn }

func (c boundedSyscallConn) SyscallConn() (syscall.RawConn, error) {
	return c.Conn.(syscall.Conn).SyscallConn()
}

// boundedDialer wraps dial (go-redis's own, TLS included) so that every
// connection is a boundedConn; refused is told of each refusal.
func boundedDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error), refused func(error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		bc := &boundedConn{Conn: conn, scan: newReplyScanner(defaultLimits), addr: addr, refused: refused}
		if _, ok := conn.(syscall.Conn); ok {
			return boundedSyscallConn{bc}, nil
		}
		return bc, nil
	}
}
