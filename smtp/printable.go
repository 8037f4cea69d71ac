package smtp

import "unicode/utf8"

// Printable returns s made safe for a log line: control characters, DEL,
// C1 controls and invalid UTF-8 become \xNN escapes (so a sender cannot
// start a new line), and the result is at most max bytes, ending in "..."
// when it was cut. Clean strings within the bound are returned unchanged,
// without allocating.
func Printable(s string, max int) string { return printable(s, max, false) }

// ASCII is Printable for what goes on the wire — header values, SMTP
// replies, quarantine reasons: every byte outside printable ASCII is
// escaped too, so the result is one line of 7-bit text whatever the
// client sent and whether or not the message is SMTPUTF8.
func ASCII(s string, max int) string { return printable(s, max, true) }

func printable(s string, max int, ascii bool) string {
	clean := len(s) <= max
	for i := 0; clean && i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f || c >= utf8.RuneSelf {
			clean = false
		}
	}
	if clean {
		return s
	}
	const hexdigits = "0123456789abcdef"
	buf := make([]byte, 0, min(len(s)+8, max+4))
	keep := 0 // length of buf when it last fitted max-3, where "..." may go
	for i := 0; i < len(s); {
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size <= 1 || c < 0x20 || c == 0x7f || c >= 0x80 && (ascii || c < 0xa0) {
			// Escape byte by byte: a multi-byte rune becomes one \xNN per byte.
			for j := 0; j < size; j++ {
				b := s[i+j]
				buf = append(buf, '\\', 'x', hexdigits[b>>4], hexdigits[b&15])
			}
		} else {
			buf = append(buf, s[i:i+size]...)
		}
		if len(buf) > max {
			return string(append(buf[:keep], "..."...))
		}
		if len(buf) <= max-3 {
			keep = len(buf)
		}
		i += size
	}
	return string(buf)
}
