package conf

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxQuoted is how much of a value an error quotes: enough to recognise
// it, not so much that a huge value floods the reload log, systemd's
// STATUS= line or a terminal.
const MaxQuoted = 80

// maxMessage caps a whole error message, whatever went into it.
const maxMessage = 1024

// Clip shortens s to at most about MaxQuoted bytes, cut at a character
// boundary and ending in "…" when cut.
func Clip(s string) string { return cut(s, MaxQuoted) }

// cut shortens s to at most n bytes, "…" included, when it is longer.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	n -= len("…")
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// Quote is %q of s clipped: how an error shows a value.
func Quote(s string) string { return strconv.Quote(Clip(s)) }

// clipArgs clips the strings among a message's arguments, so that a
// message about a huge value is never built whole.
func clipArgs(args []any) []any {
	var out []any
	for i, a := range args {
		var c any
		switch v := a.(type) {
		case string:
			if len(v) > MaxQuoted {
				c = Clip(v)
			}
		case []byte:
			if len(v) > MaxQuoted {
				c = Clip(string(v[:MaxQuoted+utf8.UTFMax]))
			}
		}
		if c == nil {
			continue
		}
		if out == nil {
			out = append([]any(nil), args...)
		}
		out[i] = c
	}
	if out == nil {
		return args
	}
	return out
}

// ClipMessage bounds an error message made elsewhere: every value it
// quotes ("…" or `…`) longer than MaxQuoted is clipped, and the whole is
// cut at 1 KiB. (Unquoted words are left whole: a file's path is one.) It
// is the last guard before a message reaches a log or a terminal; the
// messages sluice makes clip their values as they are made.
func ClipMessage(msg string) string {
	if len(msg) <= MaxQuoted {
		return msg
	}
	var b strings.Builder
	for len(msg) > 0 && b.Len() <= maxMessage {
		i := strings.IndexAny(msg, "\"`")
		if i < 0 {
			b.WriteString(msg[:min(len(msg), maxMessage+1)])
			break
		}
		b.WriteString(msg[:min(i, maxMessage+1)])
		msg = msg[i:]
		q, err := strconv.QuotedPrefix(msg)
		if err != nil {
			b.WriteByte(msg[0])
			msg = msg[1:]
			continue
		}
		if s, err := strconv.Unquote(q); err == nil && len(q) > MaxQuoted+2 {
			if q[0] == '`' {
				b.WriteString("`" + Clip(s) + "`")
			} else {
				b.WriteString(Quote(s))
			}
		} else {
			b.WriteString(q)
		}
		msg = msg[len(q):]
	}
	return cut(b.String(), maxMessage)
}
