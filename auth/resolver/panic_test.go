package resolver

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"sluice/guard"
	"sluice/test/dnstest"
)

// A panic in a goroutine the resolver starts — the shared query, the
// AAAA half of a dual lookup — becomes a temporary error for the lookup,
// is logged and counted by guard, and leaves the resolver working.
func TestLookupPanicIsTemporary(t *testing.T) {
	z := dnstest.NewZone().MustAddText(`dual.test. 300 IN A 192.0.2.1`, `dual.test. 300 IN AAAA 2001:db8::1`)
	r, _, clk := newTest(t, z)
	test := goid()
	r.now = func() time.Time {
		if goid() != test {
			panic("clock broken")
		}
		return clk.now()
	}
	before := panics("dns lookup")
	_, err := r.LookupNetIP(context.Background(), "ip", "dual.test")
	de := dnsErr(t, err)
	var pe *guard.PanicError
	if !de.Temporary() || !errors.As(err, &pe) {
		t.Fatalf("lookup whose goroutines panicked: %+v, want a temporary error from the panic", de)
	}
	if n := panics("dns lookup") - before; n != 2 {
		t.Errorf("guard counted %d panics, want 2 (the A query and the AAAA lookup)", n)
	}
	r.now = clk.now
	if ips, err := r.LookupNetIP(context.Background(), "ip", "dual.test"); err != nil || len(ips) != 2 {
		t.Fatalf("after the panics: %v, %v", ips, err)
	}
}

func panics(where string) uint64 {
	for _, c := range guard.Counts() {
		if c.Where == where {
			return c.N
		}
	}
	return 0
}

// goid is the id of the calling goroutine, from its stack header
// ("goroutine 18 [running]:").
func goid() string {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	f := strings.Fields(string(buf))
	if len(f) < 2 {
		return ""
	}
	return f[1]
}
