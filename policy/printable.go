package policy

import "unicode/utf8"

// Printable returns s made safe for a header value, an SMTP reply or a log
// line: control characters, DEL, C1 controls and invalid UTF-8 become \xNN
// escapes (so a sender cannot start a new header line or reply line), and
// the result is at most max bytes, ending in "..." when it was cut.
// Clean strings within the bound are returned unchanged, without allocating.
func Printable(s string, max int) string {
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
	buf := make([]byte, 0, min(len(s)+8, max))
	keep := 0 // length of buf when it last fitted max-3, where "..." may go
	for i := 0; i < len(s); {
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size <= 1 || c < 0x20 || c == 0x7f || c >= 0x80 && c < 0xa0 {
			buf = append(buf, '\\', 'x', hexdigits[s[i]>>4], hexdigits[s[i]&15])
			size = 1
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
