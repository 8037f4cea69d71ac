package resolver

import (
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// answer is the outcome of one question, kept as what the checks read of
// it rather than as records: a parsed record costs ~150 bytes of heap, an
// address kept here 4 or 16.
type answer struct {
	addrs    []byte   // A: 4 bytes an address, AAAA: 16, in answer order
	strs     []string // TXT: each record's strings joined, raw; MX and PTR: the names
	prefs    []uint16 // MX: the preference of each name in strs
	nxdomain bool
}

// What an answer keeps of record types whose users need a fixed number.
const (
	// maxMX: RFC 7208 §4.6.4 makes an "mx" term with more than 10 names
	// a permerror, so an eleventh name is all SPF needs to say so; the
	// sender_domain_exists check needs one.
	maxMX = 11
	// maxPTR: RFC 7208 §4.6.4 and §5.5 use the first 10 PTR names and
	// ignore the rest; so does client_rdns.
	maxPTR = 10
)

// add keeps what the checks need of rr, one of the records answering the
// question.
func (a *answer) add(rr dns.RR) {
	switch rr := rr.(type) {
	case *dns.A:
		if ip := rr.A.To4(); ip != nil {
			a.addrs = append(a.addrs, ip...)
		}
	case *dns.AAAA:
		if len(rr.AAAA) == 16 {
			a.addrs = append(a.addrs, rr.AAAA...)
		}
	case *dns.TXT:
		var b strings.Builder
		for _, s := range rr.Txt {
			b.WriteString(unescape(s))
		}
		a.strs = append(a.strs, b.String())
	case *dns.MX:
		if len(a.strs) < maxMX {
			a.strs = append(a.strs, rr.Mx)
			a.prefs = append(a.prefs, rr.Preference)
		}
	case *dns.PTR:
		if len(a.strs) < maxPTR {
			a.strs = append(a.strs, rr.Ptr)
		}
	}
}

// trim gives the answer's slices their exact length, so that what the
// cache counts is what it holds.
func (a *answer) trim() {
	if len(a.addrs) > 0 {
		a.addrs = append([]byte(nil), a.addrs...)
	}
	if len(a.strs) > 0 {
		a.strs = append([]string(nil), a.strs...)
	}
	if len(a.prefs) > 0 {
		a.prefs = append([]uint16(nil), a.prefs...)
	}
}

// answerCost is what keeping one answer costs beyond its data: the cache
// entry, its list element and index slot, the slice headers. It is rounded
// up from what TestCacheCountsWhatItHolds measures, so that counting
// never understates.
const answerCost = 320

// cost is the bytes an answer takes in memory, for the cache's bound and a
// check's budget alike; name is the name it answers. A slice's capacity
// is its allocation; a string's is estimated from its length.
func (a *answer) cost(name string) int {
	n := answerCost + allocSize(len(name)) + cap(a.addrs) + 2*cap(a.prefs) + 16*cap(a.strs)
	for _, s := range a.strs {
		n += allocSize(len(s))
	}
	return n
}

// allocSize is at least what the Go allocator takes for n bytes: its size
// classes are 16 bytes apart up to 128 and at most 12.5% apart above.
func allocSize(n int) int { return (n + n/8 + 15) &^ 15 }

// netIPs returns the addresses, those of A records unmapped.
func (a *answer) netIPs(qtype uint16) []netip.Addr {
	size := 4
	if qtype == dns.TypeAAAA {
		size = 16
	}
	out := make([]netip.Addr, 0, len(a.addrs)/size)
	for b := a.addrs; len(b) >= size; b = b[size:] {
		if size == 4 {
			out = append(out, netip.AddrFrom4([4]byte(b)))
		} else {
			out = append(out, netip.AddrFrom16([16]byte(b)))
		}
	}
	return out
}
