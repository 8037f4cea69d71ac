package dkim

import (
	"bytes"
	"hash"
	"strings"
)

// bodyHasher hashes a body in one canonical form (RFC 6376 §3.4.3,
// §3.4.4) as it streams in. Lines end at LF, with or without the CR
// before it (a bare LF counts as CRLF, as Postfix would have sent it);
// empty lines are held back until content follows, so that those at the
// end never count.
//
// Most lines of real mail are already in canonical form, so a complete
// line that needs no change is passed to the hash as part of one span
// of the chunk, not byte by byte: hashing, not canonicalising, is what a
// 50 KB body costs.
type bodyHasher struct {
	h       hash.Hash
	relaxed bool

	empties     int  // empty lines held back
	lineContent bool // the current line has emitted content
	wsp         bool // relaxed: whitespace seen, not yet emitted
	cr          bool // a CR seen last: a line end if LF follows
	any         bool // something was emitted

	out []byte // what the slow path emits, hashed once per chunk
}

var crlfs = bytes.Repeat([]byte("\r\n"), 32)

func (b *bodyHasher) emitEmpties() {
	for b.empties > 0 {
		n := min(b.empties, len(crlfs)/2)
		b.h.Write(crlfs[:2*n])
		b.empties -= n
	}
}

// Write hashes one chunk of the body.
func (b *bodyHasher) Write(p []byte) {
	i := 0
	for i < len(p) {
		if b.lineContent || b.wsp || b.cr {
			i = b.slow(p, i)
			continue
		}
		// At the start of a line: take whole lines that need no change
		// as one span, after what the slow path emitted before it.
		if len(b.out) > 0 {
			b.h.Write(b.out)
			b.out = b.out[:0]
		}
		start := i
		for i < len(p) {
			lf := bytes.IndexByte(p[i:], '\n')
			if lf < 1 || p[i+lf-1] != '\r' {
				break // a partial line, a bare LF or an empty bare-LF line
			}
			line := p[i : i+lf-1]
			if len(line) == 0 {
				// An empty line: held back, so the span ends here.
				if i > start {
					b.emitEmpties()
					b.h.Write(p[start:i])
					b.any = true
				}
				b.empties++
				i += lf + 1
				start = i
				continue
			}
			if !b.canonical(line) {
				break
			}
			if b.empties > 0 {
				if i > start {
					b.h.Write(p[start:i])
					b.any = true
				}
				b.emitEmpties()
				start = i
			}
			i += lf + 1
		}
		if i > start {
			b.emitEmpties()
			b.h.Write(p[start:i])
			b.any = true
		}
		if i < len(p) {
			i = b.slow(p, i)
		}
	}
	if len(b.out) > 0 {
		b.h.Write(b.out)
		b.out = b.out[:0]
	}
}

// canonical reports whether a line's content (without its CRLF) is
// already what the canonical form makes of it.
func (b *bodyHasher) canonical(line []byte) bool {
	if bytes.IndexByte(line, '\r') >= 0 {
		return false
	}
	if !b.relaxed {
		return true
	}
	if line[len(line)-1] == ' ' || bytes.IndexByte(line, '\t') >= 0 {
		return false
	}
	return !bytes.Contains(line, []byte("  "))
}

// slow canonicalises byte by byte from p[i] to the end of the line, or of
// p, and returns where it stopped.
func (b *bodyHasher) slow(p []byte, i int) int {
	for ; i < len(p); i++ {
		c := p[i]
		if b.cr {
			b.cr = false
			if c == '\n' {
				b.endLine()
				return i + 1
			}
			b.content('\r')
		}
		switch {
		case c == '\r':
			b.cr = true
		case c == '\n':
			b.endLine()
			return i + 1
		case b.relaxed && (c == ' ' || c == '\t'):
			b.wsp = true
		default:
			b.content(c)
		}
	}
	return i
}

func (b *bodyHasher) content(c byte) {
	if !b.lineContent {
		if b.empties > 0 {
			b.h.Write(b.out)
			b.out = b.out[:0]
			b.emitEmpties()
		}
		b.lineContent = true
	}
	if b.wsp {
		b.out = append(b.out, ' ')
		b.wsp = false
	}
	b.out = append(b.out, c)
	b.any = true
}

func (b *bodyHasher) endLine() {
	if b.lineContent {
		b.out = append(b.out, '\r', '\n')
		b.lineContent = false
	} else {
		b.empties++
	}
	b.wsp = false
}

// Sum ends the body and returns its hash.
func (b *bodyHasher) Sum() []byte {
	if b.cr {
		b.cr = false
		b.content('\r')
	}
	if b.lineContent {
		b.out = append(b.out, '\r', '\n')
		b.lineContent = false
	}
	if !b.relaxed && !b.any {
		// Simple: an empty body is one CRLF.
		b.out = append(b.out, '\r', '\n')
	}
	b.h.Write(b.out)
	b.out = b.out[:0]
	return b.h.Sum(nil)
}

// relaxedHeader is a header field in relaxed canonical form (RFC 6376
// §3.4.2): the name in lower case, the value unfolded, its whitespace
// runs made one space and trimmed at both ends.
func relaxedHeader(w *strings.Builder, name, value string) {
	w.WriteString(strings.ToLower(strings.TrimSpace(name)))
	w.WriteByte(':')
	space, started := false, false
	for i := 0; i < len(value); i++ {
		switch c := value[i]; c {
		case ' ', '\t', '\r', '\n':
			space = true
		default:
			if space && started {
				w.WriteByte(' ')
			}
			space, started = false, true
			w.WriteByte(c)
		}
	}
}
