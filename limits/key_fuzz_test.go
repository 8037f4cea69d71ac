package limits

import (
	"net/netip"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"sluice/policy"
)

// The fuzz targets hold key building to what the store and the logs rely
// on, whatever a client sends: no panic; a key is the same for the same
// input; each value is at most maxValueLen bytes of valid UTF-8 with no
// control character, space or ','; and normalisation is idempotent. Seeds
// are in testdata/fuzz/<target>; run one with
//
//	go test ./limits -run '^$' -fuzz FuzzAddressKey -fuzztime 1m

func fuzzRule(t *testing.T, r Rule) *rule {
	t.Helper()
	c, err := compileRule(&r, nil, nil)
	if err != nil {
		t.Fatalf("rule %+v: %v", r, err)
	}
	return c
}

// checkKey checks the shape of a key made of dims and returns its values.
func checkKey(t *testing.T, key []byte, dims []dim) []string {
	t.Helper()
	parts := strings.Split(string(key), ",")
	if len(parts) != len(dims) {
		t.Fatalf("key %q has %d parts, want %d (a value let a ',' through)", key, len(parts), len(dims))
	}
	vals := make([]string, len(parts))
	for i, p := range parts {
		v, ok := strings.CutPrefix(p, dims[i].String()+":")
		if !ok {
			t.Fatalf("key %q: part %d %q does not start with %s:", key, i, p, dims[i])
		}
		if len(v) == 0 || len(v) > maxValueLen {
			t.Fatalf("key %q: value %q is %d bytes (want 1..%d)", key, v, len(v), maxValueLen)
		}
		if !utf8.ValidString(v) {
			t.Fatalf("key %q: value %q is not valid UTF-8", key, v)
		}
		for _, r := range v {
			if r <= ' ' || r == ',' || !unicode.IsPrint(r) {
				t.Fatalf("key %q: value %q holds %U", key, v, r)
			}
		}
		vals[i] = v
	}
	return vals
}

func FuzzAddressKey(f *testing.F) {
	f.Add("Alice+tag@Example.ORG", true, false)
	f.Fuzz(func(t *testing.T, addr string, strip, countNull bool) {
		null := "skip"
		if countNull {
			null = "count"
		}
		sender := fuzzRule(t, Rule{Name: "s", Count: "recipients", Per: "sender", Rate: "1/1s", StripExtension: strip, NullSender: null})
		domain := fuzzRule(t, Rule{Name: "d", Count: "recipients", Per: "sender_domain", Rate: "1/1s", NullSender: null})
		rcpt := fuzzRule(t, Rule{Name: "r", Count: "recipients", Per: []any{"rcpt", "rcpt_domain"}, Rate: "1/1s", StripExtension: strip})
		f := policy.Facts{Sender: addr, Rcpt: addr}

		k1, ok1 := sender.keyer.appendKey(nil, &f)
		k2, ok2 := sender.keyer.appendKey(make([]byte, 0, 7), &f)
		if ok1 != ok2 || string(k1) != string(k2) {
			t.Fatalf("%q: keys %q (%v) and %q (%v) for the same input", addr, k1, ok1, k2, ok2)
		}
		null1 := trimPath(addr) == ""
		if ok1 != (!null1 || countNull) {
			t.Fatalf("%q: sender rule applies %v (null sender %v, count %v)", addr, ok1, null1, countNull)
		}
		if ok1 {
			checkKey(t, k1, sender.keyer.dims)
		}
		if k, ok := domain.keyer.appendKey(nil, &f); ok {
			checkKey(t, k, domain.keyer.dims)
		}
		if k, ok := rcpt.keyer.appendKey(nil, &f); ok {
			checkKey(t, k, rcpt.keyer.dims)
		}

		if fast, slow := appendNorm(nil, addr, true), appendNormSlow(nil, addr, true); string(fast) != string(slow) {
			t.Fatalf("%q: appendNorm %q, byte by byte %q", addr, fast, slow)
		}

		// Normalisation is idempotent, and a normalised address has the
		// key of the address it came from.
		n := normalizeAddress(addr, strip)
		if again := normalizeAddress(n, strip); again != n {
			t.Fatalf("normalizeAddress(%q) = %q, and again %q", addr, n, again)
		}
		if ok1 && !null1 {
			nf := policy.Facts{Sender: n}
			kn, okn := sender.keyer.appendKey(nil, &nf)
			if !okn || string(kn) != string(k1) {
				t.Fatalf("%q: key %q, but its normal form %q has key %q (%v)", addr, k1, n, kn, okn)
			}
		}
	})
}

func FuzzClientIPKey(f *testing.F) {
	f.Add("2001:db8::1%eth0", uint8(24), uint8(64))
	f.Fuzz(func(t *testing.T, s string, v4, v6 uint8) {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return
		}
		v4bits, v6bits := 1+int(v4)%32, 1+int(v6)%128
		r := fuzzRule(t, Rule{Name: "c", Count: "connections", Per: "client_ip", Rate: "1/1s", IPv4Prefix: v4bits, IPv6Prefix: v6bits})
		k, ok := r.keyer.appendKey(nil, &policy.Facts{ClientIP: ip})
		if !ok {
			t.Fatalf("%s: no key", ip)
		}
		again, _ := r.keyer.appendKey(nil, &policy.Facts{ClientIP: ip})
		if string(again) != string(k) {
			t.Fatalf("%s: keys %q and %q", ip, k, again)
		}
		v := checkKey(t, k, r.keyer.dims)[0]

		// The key names the client's network: parse it back.
		plain := ip.Unmap().WithZone("")
		bits := v6bits
		if plain.Is4() {
			bits = v4bits
		}
		want, err := plain.Prefix(bits)
		if err != nil {
			t.Fatalf("%s/%d: %v", plain, bits, err)
		}
		if p, err := netip.ParsePrefix(v); err == nil {
			if p != want {
				t.Fatalf("%s: key %q, want network %s", ip, k, want)
			}
		} else if a, err := netip.ParseAddr(v); err != nil || a != plain || bits != plain.BitLen() {
			t.Fatalf("%s: key %q is neither the network %s nor the address", ip, k, want)
		}

		// Every address of the network shares the key; a zone or the
		// IPv4-mapped form changes nothing.
		for _, other := range []netip.Addr{want.Addr(), lastOf(want), plain} {
			if other.Is4In6() {
				continue // ::ffff:0:0/96 inside a short IPv6 prefix counts as IPv4
			}
			if ko, _ := r.keyer.appendKey(nil, &policy.Facts{ClientIP: other}); string(ko) != string(k) {
				t.Fatalf("%s and %s, both in %s, have keys %q and %q", ip, other, want, k, ko)
			}
		}
		if plain.Is4() {
			mapped := netip.AddrFrom16(plain.As16())
			if km, _ := r.keyer.appendKey(nil, &policy.Facts{ClientIP: mapped}); string(km) != string(k) {
				t.Fatalf("%s and %s: keys %q and %q", ip, mapped, k, km)
			}
		}
	})
}

// lastOf is the last address of p.
func lastOf(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func FuzzCompositeKey(f *testing.F) {
	f.Add("bob", "carol@example.net", "mx.example.", "smtpd")
	f.Fuzz(func(t *testing.T, user, rcpt, helo, listener string) {
		r := fuzzRule(t, Rule{Name: "x", Count: "recipients", Per: []any{"sasl_user", "rcpt_domain", "helo", "listener"}, Rate: "1/1s"})
		f := policy.Facts{SASLUser: user, Rcpt: rcpt, Helo: helo, Listener: listener}
		k, ok := r.keyer.appendKey(nil, &f)
		want := user != "" && domainOf(trimPath(rcpt)) != "" && strings.TrimRight(helo, ".") != "" && listener != ""
		if ok != want {
			t.Fatalf("%+v: applies %v, want %v", f, ok, want)
		}
		if !ok {
			return
		}
		vals := checkKey(t, k, r.keyer.dims)
		again, _ := r.keyer.appendKey(nil, &f)
		if string(again) != string(k) {
			t.Fatalf("%+v: keys %q and %q", f, k, again)
		}
		// Two facts that differ in a short value never share a key.
		if len(vals[0]) < maxValueLen-2 {
			f2 := f
			f2.SASLUser += "x"
			if k2, _ := r.keyer.appendKey(nil, &f2); string(k2) == string(k) {
				t.Fatalf("users %q and %q share key %q", user, f2.SASLUser, k)
			}
		}
	})
}
