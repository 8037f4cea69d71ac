package resolver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"sluice/conf"
	"sluice/test/dnstest"
)

// patient gives lookups the time a server takes to build answers of
// thousands of records on a busy machine, so that a slow answer does not
// pass for the bound under test.
func patient(c *Config) { c.Timeout = conf.Duration(maxTimeout) }

// An answer over MaxMessage is refused with a permanent error that says
// so, after one query over UDP and one over TCP: no other try could get
// a different one. An answer just under it is read whole.
func TestTooLargeAnswer(t *testing.T) {
	r, srv, _ := newTest(t, dnstest.HostileZone(), patient)
	_, err := r.LookupNetIP(context.Background(), "ip4", "r1.huge.attacker.example")
	de := dnsErr(t, err)
	if !errors.Is(err, ErrTooLarge) || de.Temporary() || de.IsNotFound || !strings.Contains(de.Err, "too large") {
		t.Fatalf("4,000 addresses: %+v, want a permanent ErrTooLarge", de)
	}
	if n := srv.Count("r1.huge.attacker.example", dns.TypeA); n != 2 {
		t.Errorf("%d queries for the too-large answer, want 2 (UDP, then TCP)", n)
	}
	ips, err := r.LookupNetIP(context.Background(), "ip4", "r1.big.attacker.example")
	if err != nil || len(ips) != dnstest.BigAddrs || ips[len(ips)-1] != netip.MustParseAddr("10.1.7.7") {
		t.Fatalf("1,800 addresses: got %d, %v", len(ips), err)
	}
}

// A long MX answer keeps its first 11 names, as many as SPF needs to say
// "more than 10"; a long PTR answer its first 10, as many as SPF and
// client_rdns use.
func TestRecordCaps(t *testing.T) {
	z := dnstest.NewZone()
	for i := range 30 {
		z.MustAddText(fmt.Sprintf("many.test. 300 IN MX %d mx%d.many.test.", 100-i, i))
		z.MustAddText(fmt.Sprintf("1.2.0.192.in-addr.arpa. 300 IN PTR n%d.many.test.", i))
	}
	r, _, _ := newTest(t, z)
	mx, err := r.LookupMX(context.Background(), "many.test")
	if err != nil || len(mx) != maxMX {
		t.Fatalf("MX: %d names, %v; want %d", len(mx), err, maxMX)
	}
	if mx[0].Host != "mx10.many.test." || mx[0].Pref != 90 || mx[10].Host != "mx0.many.test." {
		t.Errorf("MX kept %v..%v, want the first 11 of the answer, by preference", mx[0], mx[10])
	}
	names, err := r.LookupAddr(context.Background(), "192.0.2.1")
	if err != nil || len(names) != maxPTR || names[0] != "n0.many.test." || names[9] != "n9.many.test." {
		t.Fatalf("PTR: %v, %v; want the first %d names", names, err, maxPTR)
	}
}

// The cache holds at most cache_bytes of answers, counted as they take
// memory: a zone's big answers push out older ones rather than grow it.
func TestCacheBytesBound(t *testing.T) {
	r, srv, _ := newTest(t, dnstest.HostileZone(), patient, func(c *Config) { c.CacheBytes = minCacheBytes })
	ctx := context.Background()
	const n = 60 // ~30 KB each: about twice what the cache holds
	for i := range n {
		if txt, err := r.LookupTXT(ctx, fmt.Sprintf("r%d.wide.attacker.example", i)); err != nil || len(txt) != 111 {
			t.Fatalf("wide name %d: %d records, %v", i, len(txt), err)
		}
	}
	answers, bytes := r.CacheUsage()
	t.Logf("%d answers of ~30 KB looked up; the cache holds %d, counted as %d bytes", n, answers, bytes)
	if bytes > minCacheBytes || answers < n/3 || answers >= n {
		t.Fatalf("the cache holds %d answers, %d bytes; want under %d bytes, with the latest answers kept", answers, bytes, minCacheBytes)
	}
	srv.ResetCounts()
	r.LookupTXT(ctx, "r0.wide.attacker.example")
	r.LookupTXT(ctx, fmt.Sprintf("r%d.wide.attacker.example", n-1))
	if srv.Count("r0.wide.attacker.example", dns.TypeTXT) == 0 || srv.Count(fmt.Sprintf("r%d.wide.attacker.example", n-1), dns.TypeTXT) != 0 {
		t.Errorf("queries: oldest %d, newest %d; the oldest answer should have been dropped and the newest kept",
			srv.Count("r0.wide.attacker.example", dns.TypeTXT), srv.Count(fmt.Sprintf("r%d.wide.attacker.example", n-1), dns.TypeTXT))
	}
}

// What the cache counts for its answers is at least what they take on the
// heap, and not a quarter more: cache_bytes is a bound on memory, and a
// fair one.
func TestCacheCountsWhatItHolds(t *testing.T) {
	heap := func() int64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapAlloc)
	}
	for _, kind := range []string{"big", "wide"} {
		t.Run(kind, func(t *testing.T) {
			r, _, _ := newTest(t, dnstest.HostileZone(), patient, func(c *Config) { c.CacheBytes = 64 << 20; c.Rate = 1e6; c.Burst = 1e5 })
			ctx := context.Background()
			for i := range 100 {
				name := fmt.Sprintf("r%d.%s.attacker.example", i, kind)
				r.LookupTXT(ctx, name)
				r.LookupNetIP(ctx, "ip4", name)
			}
			_, counted := r.CacheUsage()
			// What the resolver holds is what goes when it does.
			with := heap()
			runtime.KeepAlive(r)
			held := with - heap()
			t.Logf("200 answers: counted %d KB, the resolver holds %d KB", counted>>10, held>>10)
			// The resolver itself (limiter, maps, config) is a few KB, and
			// the heap's own bookkeeping moves by a few per cent between
			// two reads (more under -race).
			if held > int64(counted)+int64(counted)/16+16<<10 || int64(counted) > held*5/4 {
				t.Errorf("the cache counts %d KB for answers that take %d KB", counted>>10, held>>10)
			}
		})
	}
}

// A context's budget bounds the bytes of answers its lookups read, cached
// ones included; past it lookups fail with a permanent ErrBudget and send
// nothing.
func TestBudget(t *testing.T) {
	r, srv, _ := newTest(t, dnstest.HostileZone(), patient)
	name := func(i int) string { return fmt.Sprintf("r%d.wide.attacker.example", i) }
	// an answer of another context fills the cache
	if _, err := r.LookupTXT(context.Background(), name(0)); err != nil {
		t.Fatal(err)
	}
	_, one := r.CacheUsage()
	ctx := WithBudget(context.Background(), 2*one+one/2)
	for i := range 2 {
		if _, err := r.LookupTXT(ctx, name(i)); err != nil {
			t.Fatalf("lookup %d within the budget: %v", i, err)
		}
	}
	_, err := r.LookupTXT(ctx, name(0)) // cached, still read
	de := dnsErr(t, err)
	if !errors.Is(err, ErrBudget) || de.Temporary() || de.IsNotFound || !strings.Contains(de.Err, strconv.Itoa(2*one+one/2)) {
		t.Fatalf("past the budget: %+v, want a permanent ErrBudget naming the budget", de)
	}
	srv.ResetCounts()
	if _, err := r.LookupTXT(ctx, name(2)); !errors.Is(err, ErrBudget) {
		t.Fatalf("after the budget: %v", err)
	}
	if srv.Queries() != 0 {
		t.Errorf("%d queries sent after the budget was used up", srv.Queries())
	}
	// other contexts are not affected
	if _, err := r.LookupTXT(context.Background(), name(2)); err != nil {
		t.Errorf("without a budget: %v", err)
	}
}
