package dnstest

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// Fault makes the server misbehave for some questions.
type Fault uint8

const (
	// NoFault answers normally. Set it on one type to exempt that type
	// from a fault set on all types of a name.
	NoFault Fault = iota
	// ServFail answers SERVFAIL, as a resolver does when it cannot reach
	// the authority.
	ServFail
	// Timeout never answers: the client's query times out.
	Timeout
	// Refused answers REFUSED.
	Refused
)

func (f Fault) String() string {
	switch f {
	case NoFault:
		return "none"
	case ServFail:
		return "SERVFAIL"
	case Timeout:
		return "timeout"
	case Refused:
		return "REFUSED"
	}
	return fmt.Sprintf("fault(%d)", uint8(f))
}

// AnyType stands for every query type in Fault.
const AnyType uint16 = 0

type question struct {
	name  string // lower case, fully qualified
	qtype uint16
}

// Zone is the data the server answers from. Names are compared without
// regard to ASCII case; records owned by "*.name" answer for the names
// below name that have none of their own. A Zone may be changed while a
// server answers from it.
type Zone struct {
	mu     sync.RWMutex
	rrs    map[string][]dns.RR
	names  map[string]bool // names that exist, including empty non-terminals
	faults map[question]Fault
	negTTL uint32
}

// NewZone returns an empty zone: every name is NXDOMAIN.
func NewZone() *Zone {
	return &Zone{
		rrs:    make(map[string][]dns.RR),
		names:  make(map[string]bool),
		faults: make(map[question]Fault),
	}
}

// canonical is the form names are compared in: the presentation form
// miekg/dns gives a name it unpacks (so "a b" and "a\\ b" are one name),
// fully qualified, in lower case.
func canonical(name string) string {
	name = dns.Fqdn(name)
	buf := make([]byte, 256)
	if n, err := dns.PackDomainName(name, buf, 0, nil, false); err == nil {
		if s, _, err := dns.UnpackDomainName(buf[:n], 0); err == nil {
			name = s
		}
	}
	return strings.ToLower(name)
}

// Add adds records. TXT and SPF strings longer than 255 bytes are split into
// several character-strings, as a zone file compiler does.
func (z *Zone) Add(rrs ...dns.RR) *Zone {
	z.mu.Lock()
	defer z.mu.Unlock()
	for _, rr := range rrs {
		rr = dns.Copy(rr)
		h := rr.Header()
		h.Name = dns.Fqdn(h.Name)
		if h.Class == 0 {
			h.Class = dns.ClassINET
		}
		switch rr := rr.(type) {
		case *dns.TXT:
			rr.Txt = splitStrings(rr.Txt)
		case *dns.SPF:
			rr.Txt = splitStrings(rr.Txt)
		}
		name := canonical(h.Name)
		z.rrs[name] = append(z.rrs[name], rr)
		z.markExists(name)
	}
	return z
}

// AddText adds records written in zone-file syntax, e.g.
// "example.com. 300 IN TXT \"v=spf1 -all\"".
func (z *Zone) AddText(lines ...string) error {
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		if err != nil {
			return fmt.Errorf("dnstest: record %q: %w", l, err)
		}
		if rr == nil {
			return fmt.Errorf("dnstest: record %q is empty", l)
		}
		z.Add(rr)
	}
	return nil
}

// MustAddText is AddText for records written in a test; it panics on a
// syntax error.
func (z *Zone) MustAddText(lines ...string) *Zone {
	if err := z.AddText(lines...); err != nil {
		panic(err)
	}
	return z
}

// AddName makes name exist without records of its own (NODATA, not
// NXDOMAIN, for every type).
func (z *Zone) AddName(name string) *Zone {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.markExists(canonical(name))
	return z
}

// markExists marks name and its ancestors as existing: a name with data
// below it is an empty non-terminal, which answers NODATA.
func (z *Zone) markExists(name string) {
	for n := name; n != "." && n != ""; {
		z.names[n] = true
		i := strings.IndexByte(n, '.')
		n = n[i+1:]
	}
}

// Fault makes questions for name and qtype (AnyType: every type) fail. A
// fault on one type wins over one on AnyType, so NoFault on a type exempts
// it.
func (z *Zone) Fault(name string, qtype uint16, f Fault) *Zone {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.faults[question{canonical(name), qtype}] = f
	return z
}

// NegativeTTL sets the TTL and minimum of the SOA record sent with NXDOMAIN
// and NODATA answers, which a resolver uses to cache them (RFC 2308).
// The default is 0: negative answers are not cached.
func (z *Zone) NegativeTTL(ttl uint32) *Zone {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.negTTL = ttl
	return z
}

func (z *Zone) fault(name string, qtype uint16) Fault {
	if f, ok := z.faults[question{name, qtype}]; ok {
		return f
	}
	return z.faults[question{name, AnyType}]
}

// maxChain bounds CNAME chasing inside the zone, which also ends loops.
const maxChain = 8

// answer fills m's answer for q, following CNAMEs inside the zone.
func (z *Zone) answer(q dns.Question, m *dns.Msg) (Fault, bool) {
	z.mu.RLock()
	defer z.mu.RUnlock()
	name := canonical(q.Name)
	if f := z.fault(name, q.Qtype); f != NoFault {
		return f, false
	}
	owner := q.Name
	seen := make(map[string]bool)
	for range maxChain {
		seen[name] = true
		var cname *dns.CNAME
		found := false
		rrs, exists := z.lookup(name)
		for _, rr := range rrs {
			t := rr.Header().Rrtype
			if t == q.Qtype || q.Qtype == dns.TypeANY {
				m.Answer = append(m.Answer, withOwner(rr, owner))
				found = true
			} else if c, ok := rr.(*dns.CNAME); ok {
				cname = c
			}
		}
		if found || cname == nil {
			return NoFault, exists
		}
		m.Answer = append(m.Answer, withOwner(cname, owner))
		name, owner = canonical(cname.Target), cname.Target
		if seen[name] {
			return NoFault, true
		}
		if f := z.fault(name, q.Qtype); f != NoFault {
			return f, false
		}
	}
	return NoFault, true
}

// lookup returns the records of name and whether it exists. A name that
// does not exist takes the records of a wildcard, "*." and its closest
// existing ancestor (RFC 4592), so one entry can answer for any number of
// names.
func (z *Zone) lookup(name string) ([]dns.RR, bool) {
	if z.names[name] {
		return z.rrs[name], true
	}
	for n := name; ; {
		i := strings.IndexByte(n, '.')
		if i < 0 || i == len(n)-1 {
			return nil, false // no ancestor exists: the root has no wildcard here
		}
		n = n[i+1:]
		if z.names[n] {
			if w := "*." + n; z.names[w] {
				return z.rrs[w], true
			}
			return nil, false
		}
	}
}

// Addrs returns n consecutive addresses from first, to give a name as many
// A or AAAA records as a test needs.
func Addrs(first string, n int) []netip.Addr {
	a := netip.MustParseAddr(first)
	out := make([]netip.Addr, 0, n)
	for range n {
		out = append(out, a)
		a = a.Next()
	}
	return out
}

// AddAddrs gives name an A or AAAA record for each address.
func (z *Zone) AddAddrs(name string, ttl uint32, addrs ...netip.Addr) *Zone {
	rrs := make([]dns.RR, 0, len(addrs))
	for _, a := range addrs {
		if a.Is4() {
			rrs = append(rrs, &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Ttl: ttl}, A: a.AsSlice()})
		} else {
			rrs = append(rrs, &dns.AAAA{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeAAAA, Ttl: ttl}, AAAA: a.AsSlice()})
		}
	}
	return z.Add(rrs...)
}

func (z *Zone) negativeTTL() uint32 {
	z.mu.RLock()
	defer z.mu.RUnlock()
	return z.negTTL
}

// withOwner returns a copy of rr under the name the client asked for, in
// the case it used.
func withOwner(rr dns.RR, owner string) dns.RR {
	rr = dns.Copy(rr)
	rr.Header().Name = dns.Fqdn(owner)
	return rr
}

// splitStrings cuts character-strings at 255 bytes. The strings are in
// miekg/dns presentation form, where an escape such as \\ or \034 stands
// for one byte, so the cut counts bytes on the wire.
func splitStrings(ss []string) []string {
	var out []string
	for _, s := range ss {
		for {
			n, cut := 0, len(s)
			for i := 0; i < len(s); n++ {
				if n == 255 {
					cut = i
					break
				}
				switch {
				case s[i] == '\\' && isDDD(s[i+1:]):
					i += 4
				case s[i] == '\\' && i+1 < len(s):
					i += 2
				default:
					i++
				}
			}
			out = append(out, s[:cut])
			if cut == len(s) {
				break
			}
			s = s[cut:]
		}
	}
	return out
}

func isDDD(s string) bool {
	return len(s) >= 3 && isDigit(s[0]) && isDigit(s[1]) && isDigit(s[2])
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// EscapeTXT turns raw bytes into the presentation form miekg/dns expects in
// TXT strings, so a backslash or a quote in data stays itself.
func EscapeTXT(raw string) string {
	var b strings.Builder
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c == '\\' || c == '"':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < ' ' || c > '~':
			fmt.Fprintf(&b, "\\%03d", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// HostileZone is a sender zone built to cost a receiver memory. Every
// name under huge.attacker.example answers an A query with 4,000 records
// (64 KB over TCP, about the most one DNS message holds); every name under
// big.attacker.example with 1,800 (29 KB); every name under
// wide.attacker.example has 110 TXT records of 255 bytes besides its SPF
// record (29 KB) and one address. Each name's SPF record asks for its own
// addresses. HostileSender gives a fresh name per message, so that no
// cache saves the receiver a query.
func HostileZone() *Zone {
	z := NewZone().MustAddText(
		`*.huge.attacker.example. 3600 IN TXT "v=spf1 a -all"`,
		`*.big.attacker.example. 3600 IN TXT "v=spf1 a -all"`,
		`*.wide.attacker.example. 3600 IN TXT "v=spf1 a -all"`,
		`*.wide.attacker.example. 3600 IN A 10.2.0.1`,
	).AddAddrs("*.huge.attacker.example.", 3600, Addrs("10.0.0.0", HugeAddrs)...).
		AddAddrs("*.big.attacker.example.", 3600, Addrs("10.1.0.0", BigAddrs)...)
	for i := range 110 {
		z.Add(&dns.TXT{Hdr: dns.RR_Header{Name: "*.wide.attacker.example.", Rrtype: dns.TypeTXT, Ttl: 3600},
			Txt: []string{fmt.Sprintf("verification-%03d=%s", i, strings.Repeat("x", 234))}})
	}
	return z
}

// The number of addresses of each name in HostileZone.
const (
	HugeAddrs = 4000
	BigAddrs  = 1800
)

// HostileSender is the sender of message i from HostileZone: a fresh
// name each time, under huge, big and wide in turn.
func HostileSender(i int) string {
	kind := [...]string{"huge", "big", "wide"}[i%3]
	return fmt.Sprintf("a@r%d.%s.attacker.example", i, kind)
}
