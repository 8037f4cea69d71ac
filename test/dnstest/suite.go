package dnstest

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/miekg/dns"
	"gopkg.in/yaml.v3"
)

// ParseSuiteZone reads zone data in the format of the OpenSPF test suites
// (rfc7208-tests.yml): a YAML mapping from names to lists of records, given
// either alone or as the "zonedata" key of a suite document.
func ParseSuiteZone(text []byte) (*Zone, error) {
	var doc map[string]any
	if err := yaml.Unmarshal(text, &doc); err != nil {
		return nil, fmt.Errorf("dnstest: %w", err)
	}
	if zd, ok := doc["zonedata"]; ok {
		m, ok := zd.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("dnstest: zonedata is a %T, not a mapping", zd)
		}
		doc = m
	}
	return SuiteZone(doc)
}

// SuiteZone builds a zone from suite zone data as decoded from YAML into
// Go values: name -> list of entries, each either a one-key mapping
// {TYPE: value} or the word TIMEOUT (or SERVFAIL).
//
// The suite's conventions, as its reference driver (pyspf) applies them:
//   - SPF records are served as type SPF, and also as TXT when the name has
//     no TXT entry of its own; "TXT: NONE" only suppresses that copy.
//   - TIMEOUT makes every question for the name time out, except for the
//     types listed before it; entries after it are ignored. "TYPE: TIMEOUT"
//     times out only that type.
//   - TXT and SPF values are a string or a list of character-strings; MX
//     is [preference, host].
//
// Records get TTL 0 so that a caching resolver never carries one scenario's
// answers into the next.
func SuiteZone(data map[string]any) (*Zone, error) {
	z := NewZone()
	names := make([]string, 0, len(data))
	for n := range data {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := addSuiteName(z, name, data[name]); err != nil {
			return nil, fmt.Errorf("dnstest: zone data for %s: %w", name, err)
		}
	}
	return z, nil
}

func addSuiteName(z *Zone, name string, v any) error {
	entries, ok := v.([]any)
	if !ok {
		if v == nil {
			entries = nil
		} else {
			entries = []any{v}
		}
	}
	z.AddName(name)
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: dns.Fqdn(name), Rrtype: t, Class: dns.ClassINET, Ttl: 0}
	}
	seen := make(map[uint16]bool)
	hasTXT := false
	var spf []*dns.SPF
	for i, e := range entries {
		if word, ok := e.(string); ok {
			f, err := faultWord(word)
			if err != nil {
				return fmt.Errorf("entry %d: %w", i+1, err)
			}
			z.Fault(name, AnyType, f)
			for t := range seen {
				z.Fault(name, t, NoFault)
			}
			if !hasTXT && len(spf) > 0 {
				// the copies come after the fault, so TXT is not exempt
				hasTXT = true
			}
			break
		}
		m, ok := e.(map[string]any)
		if !ok || len(m) != 1 {
			return fmt.Errorf("entry %d: want {TYPE: value} or TIMEOUT, got %v", i+1, e)
		}
		for typ, val := range m {
			t, ok := dns.StringToType[strings.ToUpper(typ)]
			if !ok {
				return fmt.Errorf("entry %d: unknown type %q", i+1, typ)
			}
			if t == dns.TypeTXT {
				hasTXT = true
			}
			if s, ok := val.(string); ok && (s == "TIMEOUT" || s == "SERVFAIL") {
				f, _ := faultWord(s)
				z.Fault(name, t, f)
				continue
			}
			if s, ok := val.(string); ok && s == "NONE" {
				continue
			}
			rr, err := suiteRecord(hdr(t), val)
			if err != nil {
				return fmt.Errorf("entry %d (%s): %w", i+1, typ, err)
			}
			seen[t] = true
			z.Add(rr)
			if s, ok := rr.(*dns.SPF); ok {
				spf = append(spf, s)
			}
		}
	}
	if !hasTXT {
		for _, s := range spf {
			z.Add(&dns.TXT{Hdr: hdr(dns.TypeTXT), Txt: s.Txt})
		}
	}
	return nil
}

func faultWord(w string) (Fault, error) {
	switch w {
	case "TIMEOUT":
		return Timeout, nil
	case "SERVFAIL":
		return ServFail, nil
	}
	return NoFault, fmt.Errorf("unknown entry %q (want TIMEOUT, SERVFAIL or {TYPE: value})", w)
}

func suiteRecord(h dns.RR_Header, val any) (dns.RR, error) {
	switch h.Rrtype {
	case dns.TypeTXT, dns.TypeSPF:
		ss, err := stringList(val)
		if err != nil {
			return nil, err
		}
		for i := range ss {
			ss[i] = EscapeTXT(ss[i])
		}
		if h.Rrtype == dns.TypeSPF {
			return &dns.SPF{Hdr: h, Txt: ss}, nil
		}
		return &dns.TXT{Hdr: h, Txt: ss}, nil
	case dns.TypeA, dns.TypeAAAA:
		s, ok := val.(string)
		if !ok {
			return nil, fmt.Errorf("want an address, got %v", val)
		}
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, err
		}
		if h.Rrtype == dns.TypeA {
			if !ip.Is4() {
				return nil, fmt.Errorf("%s is not an IPv4 address", s)
			}
			return &dns.A{Hdr: h, A: ip.AsSlice()}, nil
		}
		return &dns.AAAA{Hdr: h, AAAA: ip.AsSlice()}, nil
	case dns.TypeMX:
		l, ok := val.([]any)
		if !ok || len(l) != 2 {
			return nil, fmt.Errorf("want [preference, host], got %v", val)
		}
		pref, ok := l[0].(int)
		if !ok || pref < 0 || pref > 65535 {
			return nil, fmt.Errorf("bad preference %v", l[0])
		}
		host, ok := l[1].(string)
		if !ok {
			return nil, fmt.Errorf("bad host %v", l[1])
		}
		return &dns.MX{Hdr: h, Preference: uint16(pref), Mx: dns.Fqdn(host)}, nil
	case dns.TypePTR, dns.TypeCNAME:
		s, ok := val.(string)
		if !ok {
			return nil, fmt.Errorf("want a name, got %v", val)
		}
		if h.Rrtype == dns.TypePTR {
			return &dns.PTR{Hdr: h, Ptr: dns.Fqdn(s)}, nil
		}
		return &dns.CNAME{Hdr: h, Target: dns.Fqdn(s)}, nil
	}
	return nil, fmt.Errorf("type %s is not supported here", dns.TypeToString[h.Rrtype])
}

func stringList(v any) ([]string, error) {
	switch v := v.(type) {
	case []any:
		ss := make([]string, 0, len(v))
		for _, e := range v {
			ss = append(ss, fmt.Sprint(e))
		}
		return ss, nil
	case nil:
		return nil, nil
	default:
		return []string{fmt.Sprint(v)}, nil
	}
}
