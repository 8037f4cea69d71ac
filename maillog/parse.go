package maillog

import (
	"errors"
	"time"
)

// errMalformed is a line of a kind sluice reads whose fields are not
// where they belong.
var errMalformed = errors.New("malformed mail log line")

// parser reads the lines of one file.
type parser struct {
	clock
	format Format
}

// newParser reads lines in format f; year-less stamps are in loc, and
// yearOf gives the year of the first one.
func newParser(f Format, loc *time.Location, yearOf func(time.Month, int) int) *parser {
	if loc == nil {
		loc = time.Local
	}
	return &parser{clock: clock{loc: loc, yearOf: yearOf}, format: f}
}

// parse reads one line into e. It returns errGarbled for a line that is
// not a log line and errMalformed for a mail line it cannot read; a line
// of no use is Ignored.
func (p *parser) parse(line []byte, e *Event) error {
	e.reset()
	msg, err := p.parseHead(line, p.format, &e.Head)
	if err != nil {
		return err
	}
	var perr error
	switch {
	case isSendmail(e.Program):
		perr = p.sendmail(msg, e)
	default:
		perr = p.postfix(msg, e)
	}
	if perr != nil {
		e.Kind = Ignored
	}
	return perr
}

// addr is an address as logged, without its angle brackets.
func (p *parser) addr(b []byte) string { return string(b) }

// name is a host or listener name: few, and repeated.
func (p *parser) name(b []byte) string { return p.intern(b) }

// qid is a queue id.
func (p *parser) qid(b []byte) string {
	if b == nil {
		return ""
	}
	return string(b)
}
