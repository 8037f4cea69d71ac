// Package maillog reads Postfix and Sendmail logs — syslog files in
// every timestamp form, journald exports — and rebuilds the SMTP sessions
// and mail transactions they tell of, in the order they happened.
package maillog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Format is how a log writes the head of a line: its time, host and
// program.
type Format uint8

const (
	// Auto tells each line's form by its first bytes.
	Auto Format = iota
	// Traditional is syslog's year-less "Mmm dd hh:mm:ss host prog[pid]: "
	// (rsyslog's old default, Postfix's own maillog_file, `journalctl -o
	// short`), with or without fractions of a second.
	Traditional
	// RFC3339 is "2026-12-04T04:15:01.889064+01:00 host prog[pid]: "
	// (Debian 12's rsyslog, `journalctl -o short-iso`, with "+0100" too).
	RFC3339
	// JournalJSON is `journalctl -o json`: one object per line.
	JournalJSON
)

var formatNames = [...]string{"auto", "traditional", "rfc3339", "json"}

func (f Format) String() string {
	if int(f) < len(formatNames) {
		return formatNames[f]
	}
	return fmt.Sprintf("format(%d)", f)
}

// ParseFormat parses a -format value.
func ParseFormat(s string) (Format, error) {
	for i, n := range formatNames {
		if n == s {
			return Format(i), nil
		}
	}
	return 0, fmt.Errorf("unknown log format %q (want auto, traditional, rfc3339 or json)", s)
}

// Head is the syslog part of a line: when, where and which program.
type Head struct {
	Time    int64 // Unix nanoseconds
	Host    string
	Program string // "postfix/submission/smtpd", "sm-mta"
	PID     int
}

// errGarbled is a line that is not a log line in any form known.
var errGarbled = errors.New("not a log line")

// clock turns the timestamps of one file into Unix time: it knows the
// year of year-less stamps and caches the last second it parsed, as
// consecutive lines mostly share it.
type clock struct {
	loc       *time.Location
	year      int                                 // of the last year-less stamp; 0: unknown yet
	yearOf    func(month time.Month, day int) int // the year of a file's first stamp
	lastMonth time.Month

	stamp []byte // the cached second, as written
	sec   int64

	names map[string]string // hosts and programs, allocated once each
}

// intern returns b as a string, the same string for the same bytes: a log
// names few hosts and programs, millions of times.
func (c *clock) intern(b []byte) string {
	if s, ok := c.names[string(b)]; ok {
		return s
	}
	if c.names == nil || len(c.names) > 4096 {
		c.names = make(map[string]string)
	}
	s := string(b)
	c.names[s] = s
	return s
}

// parseHead reads the head of a line in format f and returns the message
// after it.
func (c *clock) parseHead(line []byte, f Format, h *Head) ([]byte, error) {
	if f == Auto {
		f = detect(line)
	}
	switch f {
	case Traditional:
		return c.traditional(line, h)
	case RFC3339:
		return c.rfc3339(line, h)
	case JournalJSON:
		return c.journal(line, h)
	}
	return nil, errGarbled
}

// detect tells a line's form from its first bytes.
func detect(line []byte) Format {
	switch {
	case len(line) == 0:
		return Auto
	case line[0] == '{':
		return JournalJSON
	case line[0] >= '0' && line[0] <= '9':
		return RFC3339
	}
	return Traditional
}

var months = [...]string{"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"}

// traditional reads "Mmm dd hh:mm:ss[.frac] host prog[pid]: ". The day is
// space-padded in syslog files ("Dec  4") and zero-padded in Postfix's
// maillog_file ("Dec 04").
func (c *clock) traditional(line []byte, h *Head) ([]byte, error) {
	if len(line) < 16 || line[3] != ' ' || line[6] != ' ' || line[9] != ':' || line[12] != ':' {
		return nil, errGarbled
	}
	var nanos int64
	rest := line[15:]
	if len(rest) > 0 && rest[0] == '.' {
		n, frac, ok := fraction(rest[1:])
		if !ok {
			return nil, errGarbled
		}
		nanos, rest = frac, rest[1+n:]
	}
	if len(rest) == 0 || rest[0] != ' ' {
		return nil, errGarbled
	}
	if !bytes.Equal(c.stamp, line[:15]) {
		sec, err := c.traditionalSecond(line[:15])
		if err != nil {
			return nil, err
		}
		c.stamp = append(c.stamp[:0], line[:15]...)
		c.sec = sec
	}
	h.Time = c.sec*1e9 + nanos
	return c.program(rest[1:], h)
}

func (c *clock) traditionalSecond(s []byte) (int64, error) {
	m := time.Month(0)
	for i, name := range months {
		if string(s[:3]) == name {
			m = time.Month(i + 1)
			break
		}
	}
	d0 := s[4]
	if d0 == ' ' {
		d0 = '0'
	}
	day, ok1 := digits2(d0, s[5])
	hh, ok2 := digits2(s[7], s[8])
	mm, ok3 := digits2(s[10], s[11])
	ss, ok4 := digits2(s[13], s[14])
	if m == 0 || !ok1 || !ok2 || !ok3 || !ok4 || day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60 {
		return 0, errGarbled
	}
	switch {
	case c.year == 0:
		c.year = c.yearOf(m, day)
	case m < c.lastMonth && c.lastMonth-m > 6:
		// December to January: a new year. A small step back is a line
		// logged out of order, not eleven months later.
		c.year++
	case m > c.lastMonth && m-c.lastMonth > 6:
		// January back to December: lines of the old year after the new
		// one's began (several files, or clocks out of step).
		c.year--
	}
	c.lastMonth = m
	return time.Date(c.year, m, day, hh, mm, ss, 0, c.loc).Unix(), nil
}

func digits2(a, b byte) (int, bool) {
	if a < '0' || a > '9' || b < '0' || b > '9' {
		return 0, false
	}
	return int(a-'0')*10 + int(b-'0'), true
}

// fraction reads up to 9 digits of a fraction of a second; it returns how
// many bytes it read and the nanoseconds.
func fraction(b []byte) (int, int64, bool) {
	n, v := 0, int64(0)
	for n < len(b) && b[n] >= '0' && b[n] <= '9' {
		if n < 9 {
			v = v*10 + int64(b[n]-'0')
		}
		n++
	}
	if n == 0 {
		return 0, 0, false
	}
	for i := n; i < 9; i++ {
		v *= 10
	}
	return n, v, true
}

// rfc3339 reads "2026-12-04T04:15:01[.frac](Z|+01:00|+0100) host prog[pid]: ".
func (c *clock) rfc3339(line []byte, h *Head) ([]byte, error) {
	if len(line) < 20 || line[4] != '-' || line[7] != '-' || (line[10] != 'T' && line[10] != ' ') || line[13] != ':' || line[16] != ':' {
		return nil, errGarbled
	}
	rest := line[19:]
	var nanos int64
	if len(rest) > 0 && (rest[0] == '.' || rest[0] == ',') {
		n, frac, ok := fraction(rest[1:])
		if !ok {
			return nil, errGarbled
		}
		nanos, rest = frac, rest[1+n:]
	}
	sp := bytes.IndexByte(rest, ' ')
	if sp < 0 {
		return nil, errGarbled
	}
	zone := rest[:sp]
	// The cache key is the second and the zone, without the fraction.
	if !(bytes.Equal(c.stamp, line[:19]) && c.stampZone(zone)) {
		sec, err := rfc3339Second(line[:19], zone)
		if err != nil {
			return nil, err
		}
		c.stamp = append(append(append(c.stamp[:0], line[:19]...), '|'), zone...)
		c.sec = sec
	}
	h.Time = c.sec*1e9 + nanos
	return c.program(rest[sp+1:], h)
}

func (c *clock) stampZone(zone []byte) bool {
	return len(c.stamp) == 20+len(zone) && c.stamp[19] == '|' && bytes.Equal(c.stamp[20:], zone)
}

func rfc3339Second(s, zone []byte) (int64, error) {
	year, err := strconv.Atoi(string(s[:4]))
	mo, ok1 := digits2(s[5], s[6])
	day, ok2 := digits2(s[8], s[9])
	hh, ok3 := digits2(s[11], s[12])
	mm, ok4 := digits2(s[14], s[15])
	ss, ok5 := digits2(s[17], s[18])
	if err != nil || year < 1 || !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || mo < 1 || mo > 12 || day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60 {
		return 0, errGarbled
	}
	off := 0
	switch {
	case len(zone) == 1 && (zone[0] == 'Z' || zone[0] == 'z'):
	case len(zone) == 6 && zone[3] == ':' || len(zone) == 5:
		zh, ok1 := digits2(zone[1], zone[2])
		z2 := zone[3:]
		if len(zone) == 6 {
			z2 = zone[4:]
		}
		zm, ok2 := digits2(z2[0], z2[1])
		if !ok1 || !ok2 || zh > 23 || zm > 59 {
			return 0, errGarbled
		}
		off = zh*3600 + zm*60
		switch zone[0] {
		case '-':
			off = -off
		case '+':
		default:
			return 0, errGarbled
		}
	default:
		return 0, errGarbled
	}
	return time.Date(year, time.Month(mo), day, hh, mm, ss, 0, time.UTC).Unix() - int64(off), nil
}

// program reads "host prog[pid]: " (or "host prog: ") and returns the
// message after it.
func (c *clock) program(b []byte, h *Head) ([]byte, error) {
	sp := bytes.IndexByte(b, ' ')
	if sp <= 0 {
		return nil, errGarbled
	}
	h.Host = c.intern(b[:sp])
	b = b[sp+1:]
	colon := bytes.Index(b, []byte(": "))
	if colon <= 0 {
		if bytes.HasSuffix(b, []byte(":")) {
			colon = len(b) - 1
		} else {
			return nil, errGarbled
		}
	}
	tag := b[:colon]
	msg := b[min(colon+2, len(b)):]
	h.PID = 0
	if i := bytes.IndexByte(tag, '['); i > 0 && tag[len(tag)-1] == ']' {
		pid, err := strconv.Atoi(string(tag[i+1 : len(tag)-1]))
		if err != nil || pid < 0 {
			return nil, errGarbled
		}
		h.PID, tag = pid, tag[:i]
	}
	if bytes.IndexByte(tag, ' ') >= 0 {
		return nil, errGarbled
	}
	h.Program = c.intern(tag)
	return msg, nil
}

// journalEntry is what is read of a `journalctl -o json` object.
type journalEntry struct {
	Realtime   string          `json:"__REALTIME_TIMESTAMP"`
	Hostname   string          `json:"_HOSTNAME"`
	Identifier string          `json:"SYSLOG_IDENTIFIER"`
	PID        string          `json:"_PID"`
	SyslogPID  string          `json:"SYSLOG_PID"`
	Message    json.RawMessage `json:"MESSAGE"`
}

// journal reads one `journalctl -o json` object. MESSAGE is a string, or
// an array of bytes when it is not valid UTF-8.
func (c *clock) journal(line []byte, h *Head) ([]byte, error) {
	var e journalEntry
	if err := json.Unmarshal(line, &e); err != nil {
		return nil, errGarbled
	}
	us, err := strconv.ParseInt(e.Realtime, 10, 64)
	if err != nil || us <= 0 || e.Identifier == "" {
		return nil, errGarbled
	}
	h.Time = us * 1000
	h.Host = c.intern([]byte(e.Hostname))
	h.Program = c.intern([]byte(e.Identifier))
	pid := e.SyslogPID
	if pid == "" {
		pid = e.PID
	}
	h.PID, _ = strconv.Atoi(pid)
	var msg []byte
	if len(e.Message) > 0 && e.Message[0] == '[' {
		if err := json.Unmarshal(e.Message, &msg); err != nil {
			return nil, errGarbled
		}
	} else {
		var s string
		if err := json.Unmarshal(e.Message, &s); err != nil {
			return nil, errGarbled
		}
		msg = []byte(s)
	}
	return msg, nil
}
