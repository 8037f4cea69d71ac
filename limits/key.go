package limits

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"

	"sluice/policy"
)

// dim is one dimension a rule counts per.
type dim uint8

const (
	dimClientIP dim = iota
	dimSender
	dimSenderDomain
	dimSASLUser
	dimHelo
	dimRcpt
	dimRcptDomain
	dimListener
	dimDKIMDomain // the d= of each signature that passed DKIM
	dimFromDomain // the domain of the From field
)

var dimNames = [...]string{"client_ip", "sender", "sender_domain", "sasl_user", "helo", "rcpt", "rcpt_domain", "listener", "dkim_domain", "from_domain"}

func (d dim) String() string { return dimNames[d] }

// stage is the first stage at which the dimension's value is known.
func (d dim) stage() policy.Stage {
	switch d {
	case dimClientIP, dimListener:
		return policy.StageConnect
	case dimHelo:
		return policy.StageHelo
	case dimRcpt, dimRcptDomain:
		return policy.StageRcpt
	case dimDKIMDomain, dimFromDomain:
		return policy.StageData
	}
	return policy.StageMail
}

func parseDim(s string) (dim, error) {
	for i, n := range dimNames {
		if n == s {
			return dim(i), nil
		}
	}
	return 0, fmt.Errorf("unknown key %q (want client_ip, sender, sender_domain, sasl_user, helo, rcpt, rcpt_domain, listener, dkim_domain or from_domain)", s)
}

// keyer builds a rule's dimension key ("sender:alice@example.org",
// "client_ip:2001:db8:1:2::/64", "sasl_user:bob,rcpt_domain:gmail.com")
// into a caller's buffer, so a check allocates nothing.
//
// A key is injective in its normalised values: each value is escaped
// (see appendByte) so that no value can forge the ',' between two
// dimensions, and it is bounded: a value longer than maxValueLen is cut
// and ends in a hash of the whole. Whatever the client sends, a key is
// printable UTF-8 without spaces, at most len(dims)*(maxValueLen+15) bytes.
type keyer struct {
	dims           []dim
	labels         []string // "sender:", ",rcpt_domain:": what comes before each value
	ipv4Prefix     int
	ipv6Prefix     int
	stripExtension bool
	countNull      bool // null sender counted as "<>" rather than skipped
}

// maxValueLen bounds one dimension's value in a key. An SMTP path is at
// most 256 octets (RFC 5321 §4.5.3.1.3); anything longer is a client
// playing games, and still gets a distinct key through the hash.
const maxValueLen = 256

// appendKey appends the key for f to buf. ok is false when a dimension has
// no value (no client IP, not authenticated, null sender skipped, no HELO):
// the rule does not apply to that event.
func (k *keyer) appendKey(buf []byte, f *policy.Facts) (out []byte, ok bool) {
	return k.appendKeyAt(buf, f, 0)
}

// keys is how many keys f gives: one, or with dkim_domain one for each
// signing domain that passed (none when none did), each counted.
func (k *keyer) keys(f *policy.Facts) int {
	if k.has(dimDKIMDomain) {
		return len(f.DKIMDomains)
	}
	return 1
}

// appendKeyAt appends the alt-th of f's keys (see keys).
func (k *keyer) appendKeyAt(buf []byte, f *policy.Facts, alt int) (out []byte, ok bool) {
	for i, d := range k.dims {
		buf = append(buf, k.labels[i]...)
		start := len(buf)
		if d == dimDKIMDomain {
			buf, ok = appendSigner(buf, f, alt)
		} else {
			buf, ok = k.appendValue(buf, d, f)
		}
		if !ok {
			return buf, false
		}
		buf = boundValue(buf, start)
	}
	return buf, true
}

func (k *keyer) appendValue(buf []byte, d dim, f *policy.Facts) ([]byte, bool) {
	switch d {
	case dimClientIP:
		return appendPrefix(buf, f.ClientIP, k.ipv4Prefix, k.ipv6Prefix)
	case dimSender, dimSenderDomain:
		a := trimPath(f.Sender)
		if a == "" {
			if !k.countNull {
				return buf, false
			}
			return append(buf, "<>"...), true
		}
		if d == dimSender {
			return appendAddress(buf, a, k.stripExtension, true), true
		}
		dom := asciiDomain(domainOf(a))
		return appendNorm(buf, dom, true), dom != ""
	case dimRcpt:
		a := trimPath(f.Rcpt)
		return appendAddress(buf, a, k.stripExtension, true), a != ""
	case dimRcptDomain:
		dom := asciiDomain(domainOf(trimPath(f.Rcpt)))
		return appendNorm(buf, dom, true), dom != ""
	case dimSASLUser:
		return appendNorm(buf, f.SASLUser, true), f.SASLUser != ""
	case dimHelo:
		h := asciiDomain(strings.TrimRight(f.Helo, "."))
		return appendNorm(buf, h, true), h != ""
	case dimListener:
		return appendNorm(buf, f.Listener, true), f.Listener != ""
	case dimFromDomain:
		dom := asciiDomain(strings.TrimRight(f.FromDomain, "."))
		return appendNorm(buf, dom, true), dom != ""
	case dimDKIMDomain:
		return appendSigner(buf, f, 0)
	}
	return buf, false
}

// appendSigner writes the alt-th signing domain that passed DKIM.
func appendSigner(buf []byte, f *policy.Facts, alt int) ([]byte, bool) {
	if alt >= len(f.DKIMDomains) {
		return buf, false
	}
	dom := asciiDomain(strings.TrimRight(f.DKIMDomains[alt], "."))
	return appendNorm(buf, dom, true), dom != ""
}

// appendPrefix writes the client's address, or its network when the rule
// aggregates: one IPv6 host owns a whole /64 and must not escape a limit by
// rotating addresses inside it. IPv4-mapped IPv6 counts as IPv4; zones are
// dropped.
func appendPrefix(buf []byte, ip netip.Addr, v4, v6 int) ([]byte, bool) {
	if !ip.IsValid() {
		return buf, false
	}
	ip = ip.Unmap().WithZone("")
	bits := v6
	if ip.Is4() {
		bits = v4
	}
	if bits >= ip.BitLen() {
		return ip.AppendTo(buf), true
	}
	p, err := ip.Prefix(bits)
	if err != nil {
		return buf, false
	}
	return p.AppendTo(buf), true
}

// trimPath drops what may surround an address as the MTA passed it: angle
// brackets, and trailing dots of a domain ("alice@example.org."). The null
// sender, "" or "<>", becomes "".
func trimPath(a string) string {
	i, j := 0, len(a)
	for i < j && a[i] == '<' {
		i++
	}
	for j > i && (a[j-1] == '>' || a[j-1] == '.') {
		j--
	}
	return a[i:j]
}

// normalizeAddress is an address as limits count it: see appendAddress.
// Applying it twice gives the same as once.
func normalizeAddress(a string, strip bool) string {
	return string(appendAddress(nil, trimPath(a), strip, false))
}

// appendAddress writes a lower-cased address, without its +extension when
// asked (user+tag@example.org counts as user@example.org; a quoted local
// part is left whole). The whole address is folded, not just the domain:
// local parts are case-sensitive in theory, but a limit that Alice@ and
// alice@ can split is one a spammer walks around. a has been through
// trimPath; esc escapes the result for a key.
func appendAddress(buf []byte, a string, strip, esc bool) []byte {
	if at := strings.LastIndexByte(a, '@'); at >= 0 && !isASCII(a[at+1:]) {
		a = a[:at+1] + asciiDomain(a[at+1:])
	}
	if strip {
		if at := strings.LastIndexByte(a, '@'); at > 0 && a[0] != '"' {
			if plus := strings.IndexByte(a[:at], '+'); plus > 0 {
				buf = appendNorm(buf, a[:plus], esc)
				return appendNorm(buf, a[at:], esc)
			}
		}
	}
	return appendNorm(buf, a, esc)
}

// asciiDomain writes an internationalised domain the way DNS knows it
// (bücher.de as xn--bcher-kva.de), so that a sender cannot split a limit
// by writing the same domain both ways under SMTPUTF8. ASCII names, and
// names IDNA refuses, are returned as they are.
func asciiDomain(d string) string {
	if isASCII(d) || !utf8.ValidString(d) {
		return d
	}
	// Fold case first, as the key will: IDNA refuses some names in one
	// case and takes them in the other, and a key must not change when
	// it is normalised again.
	lower := string(appendNorm(nil, d, false))
	// IDNA maps some characters to nothing: a domain that would vanish
	// stays as written.
	if a, err := idna.Lookup.ToASCII(lower); err == nil && a != "" {
		return a
	}
	return lower
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// domainOf is the part of a trimmed address after its last '@'.
func domainOf(a string) string {
	if at := strings.LastIndexByte(a, '@'); at >= 0 {
		return strings.TrimRight(a[at+1:], ".")
	}
	return ""
}

// appendNorm appends s lower-cased rune by rune (without allocating, unlike
// strings.ToLower), escaped for a key when esc is set. Bytes that are not
// UTF-8 are kept as they are (or escaped), so that two different inputs do
// not both become U+FFFD.
func appendNorm(buf []byte, s string, esc bool) []byte {
	if !esc {
		return appendNormSlow(buf, s, esc)
	}
	// The common case, printable ASCII, into room made once: eight bytes
	// at a time (the last word may overlap the one before, which writes
	// the same bytes again), or a byte at a time below eight. At the
	// first byte that needs more, the rest goes the slow way.
	n := len(buf)
	buf = slices.Grow(buf, len(s))[:n+len(s)]
	dst := buf[n:]
	dst = dst[:len(s)]
	if len(s) < 8 {
		for i := range dst {
			c := keyByte[s[i]]
			if c == 0 {
				return appendNormSlow(buf[:n+i], s[i:], esc)
			}
			dst[i] = c
		}
		return buf
	}
	last := len(s) - 8
	for i := 0; ; i += 8 {
		i = min(i, last)
		b := s[i : i+8]
		w, ok := lower8(uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
			uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56)
		if !ok {
			return appendNormSlow(buf[:n+i], s[i:], esc)
		}
		binary.LittleEndian.PutUint64(dst[i:], w)
		if i == last {
			return buf
		}
	}
}

// lower8 is keyByte for eight bytes at once (little-endian in w): ok is
// false when one of them is not a byte a key keeps as it is. Each test is
// exact for "is there such a byte": non-ASCII (high bit), DEL (reaches
// the high bit with 1 added), below '!' (borrows), ',' and '%' (zero
// after an XOR); a carry out of a non-ASCII byte only adds a false alarm.
func lower8(w uint64) (uint64, bool) {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	comma, pct := w^(ones*','), w^(ones*'%')
	bad := w | (w + ones) | (w-ones*'!')&^w | (comma-ones)&^comma | (pct-ones)&^pct
	if bad&highs != 0 {
		return 0, false
	}
	// 'A'..'Z': adding 0x3f reaches 0x80 from 'A', adding 0x25 from '['.
	upper := (w + ones*(0x80-'A')) &^ (w + ones*(0x80-'Z'-1)) & highs
	return w | upper>>2, true
}

// keyByte maps each printable ASCII byte that a key keeps to its lower
// case; the rest (controls, space, ',', '%', DEL, non-ASCII) to 0.
var keyByte = func() (t [256]byte) {
	for c := '!'; c < 0x7f; c++ {
		if c != ',' && c != '%' {
			t[c] = byte(unicode.ToLower(c))
		}
	}
	return t
}()

func appendNormSlow(buf []byte, s string, esc bool) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			buf = appendByte(buf, c, esc)
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			buf = appendByte(buf, c, esc)
			i++
			continue
		}
		r = unicode.ToLower(r)
		if esc && !unicode.IsPrint(r) {
			// C1 controls, format characters (U+202E turns a log line
			// around), separators other than the ASCII space.
			for _, c := range []byte(s[i : i+size]) {
				buf = appendByte(buf, c, esc)
			}
		} else {
			buf = utf8.AppendRune(buf, r)
		}
		i += size
	}
	return buf
}

// appendByte appends one ASCII byte, or one byte of invalid UTF-8, escaped
// as %XX when esc is set and it could break a key apart (',' separates
// dimensions, '%' is the escape itself) or a log line (controls, space,
// DEL, invalid UTF-8).
func appendByte(buf []byte, c byte, esc bool) []byte {
	if esc && (c <= ' ' || c == ',' || c == '%' || c >= 0x7f) {
		const hex = "0123456789ABCDEF"
		return append(buf, '%', hex[c>>4], hex[c&15])
	}
	return append(buf, c)
}

// boundValue cuts the value that starts at buf[start:] when it is longer
// than maxValueLen: it keeps a prefix, cut at a character or escape
// boundary, and ends it with "%~" and the hash of the whole value, so long
// values stay distinct. "%~" never appears in an escaped value, so a cut
// value cannot equal an uncut one. The hash is SHA-256's first 64 bits,
// not a fast one: the client chooses these values, and a hash an
// attacker can collide would let a long value of its own share the
// counter of someone else's. Values this long are rare, so its cost is not
// on the usual path.
func boundValue(buf []byte, start int) []byte {
	v := buf[start:]
	if len(v) <= maxValueLen {
		return buf
	}
	sum := sha256.Sum256(v)
	h := binary.BigEndian.Uint64(sum[:8])
	keep := maxValueLen - 18
	for keep > 0 && !utf8.RuneStart(v[keep]) {
		keep--
	}
	if keep >= 1 && v[keep-1] == '%' {
		keep--
	} else if keep >= 2 && v[keep-2] == '%' {
		keep -= 2
	}
	buf = append(buf[:start+keep], '%', '~')
	const hex = "0123456789abcdef"
	for shift := 60; shift >= 0; shift -= 4 {
		buf = append(buf, hex[(h>>shift)&15])
	}
	return buf
}
