package resolver

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"sluice/conf"
	"sluice/test/dnstest"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newTest starts a server on z and a resolver pointed at it, with a clock
// the test moves.
func newTest(t *testing.T, z *dnstest.Zone, edit ...func(*Config)) (*Resolver, *dnstest.Server, *clock) {
	t.Helper()
	srv := dnstest.Start(t, z)
	cfg := &Config{Servers: []string{srv.Addr()}, Timeout: conf.Duration(300 * time.Millisecond)}
	for _, e := range edit {
		e(cfg)
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	r, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	r.now = c.now
	return r, srv, c
}

func dnsErr(t *testing.T, err error) *net.DNSError {
	t.Helper()
	var de *net.DNSError
	if !errors.As(err, &de) {
		t.Fatalf("error %v (%T) is not a *net.DNSError", err, err)
	}
	// blitiri.com.ar/go/spf uses a type assertion, not errors.As.
	if _, ok := err.(*net.DNSError); !ok {
		t.Fatalf("error %T is wrapped; the SPF library needs a bare *net.DNSError", err)
	}
	return de
}

func TestTXT(t *testing.T) {
	z := dnstest.NewZone().MustAddText(
		`example.test. 300 IN TXT "v=spf1 " "ip4:192.0.2.1 -all"`,
		`example.test. 300 IN TXT "other"`,
		`odd.test. 300 IN TXT "back\\slash \"quoted\" \128"`,
	)
	r, _, _ := newTest(t, z)
	got, err := r.LookupTXT(context.Background(), "example.test")
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if want := []string{"other", "v=spf1 ip4:192.0.2.1 -all"}; !slices.Equal(got, want) {
		t.Errorf("TXT = %q, want %q", got, want)
	}
	got, err = r.LookupTXT(context.Background(), "ODD.test.")
	if err != nil {
		t.Fatal(err)
	}
	if want := "back\\slash \"quoted\" \x80"; len(got) != 1 || got[0] != want {
		t.Errorf("TXT = %q, want raw bytes %q", got, want)
	}
}

func TestLongTXTOverTCP(t *testing.T) {
	var parts []string
	for i := range 12 {
		parts = append(parts, `"`+strings.Repeat(string(rune('a'+i)), 200)+`"`)
	}
	z := dnstest.NewZone().MustAddText(`big.test. 300 IN TXT ` + strings.Join(parts, " "))
	r, _, _ := newTest(t, z)
	got, err := r.LookupTXT(context.Background(), "big.test")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || len(got[0]) != 2400 {
		t.Fatalf("got %d records, first %d bytes; want one of 2400 (UDP truncates, TCP must be used)", len(got), len(got[0]))
	}
}

func TestPositiveCacheHonoursTTL(t *testing.T) {
	z := dnstest.NewZone().MustAddText(`a.test. 60 IN A 192.0.2.1`, `zero.test. 0 IN A 192.0.2.2`)
	r, srv, clk := newTest(t, z)
	ctx := context.Background()
	for range 3 {
		if _, err := r.LookupNetIP(ctx, "ip4", "a.test"); err != nil {
			t.Fatal(err)
		}
	}
	if n := srv.Count("a.test", dns.TypeA); n != 1 {
		t.Errorf("queries for a.test within its TTL = %d, want 1", n)
	}
	clk.add(61 * time.Second)
	if _, err := r.LookupNetIP(ctx, "ip4", "a.test"); err != nil {
		t.Fatal(err)
	}
	if n := srv.Count("a.test", dns.TypeA); n != 2 {
		t.Errorf("queries for a.test after its TTL = %d, want 2", n)
	}
	for range 2 {
		ips, err := r.LookupNetIP(ctx, "ip4", "zero.test")
		if err != nil || len(ips) != 1 || ips[0] != netip.MustParseAddr("192.0.2.2") {
			t.Fatalf("zero.test = %v, %v", ips, err)
		}
	}
	if n := srv.Count("zero.test", dns.TypeA); n != 2 {
		t.Errorf("queries for a TTL 0 answer = %d, want 2 (TTL 0 is not cached)", n)
	}
}

func TestMaxTTL(t *testing.T) {
	z := dnstest.NewZone().MustAddText(`a.test. 86400 IN A 192.0.2.1`)
	r, srv, clk := newTest(t, z, func(c *Config) { c.MaxTTL = conf.Duration(time.Minute) })
	ctx := context.Background()
	r.LookupNetIP(ctx, "ip4", "a.test")
	clk.add(2 * time.Minute)
	r.LookupNetIP(ctx, "ip4", "a.test")
	if n := srv.Count("a.test", dns.TypeA); n != 2 {
		t.Errorf("queries = %d, want 2: max_ttl caps a day-long TTL", n)
	}
}

func TestNegativeCache(t *testing.T) {
	z := dnstest.NewZone().MustAddText(`exists.test. 300 IN A 192.0.2.1`).NegativeTTL(30)
	r, srv, clk := newTest(t, z)
	ctx := context.Background()
	for range 2 {
		_, err := r.LookupTXT(ctx, "missing.test")
		if de := dnsErr(t, err); !de.IsNotFound || de.Temporary() {
			t.Fatalf("NXDOMAIN gave %+v, want IsNotFound and not temporary", de)
		}
		txt, err := r.LookupTXT(ctx, "exists.test")
		if err != nil || len(txt) != 0 {
			t.Fatalf("NODATA gave %q, %v; want nothing and no error", txt, err)
		}
	}
	if n := srv.Count("missing.test", dns.TypeTXT); n != 1 {
		t.Errorf("NXDOMAIN queries = %d, want 1 (cached for the SOA minimum)", n)
	}
	if n := srv.Count("exists.test", dns.TypeTXT); n != 1 {
		t.Errorf("NODATA queries = %d, want 1", n)
	}
	clk.add(31 * time.Second)
	r.LookupTXT(ctx, "missing.test")
	if n := srv.Count("missing.test", dns.TypeTXT); n != 2 {
		t.Errorf("NXDOMAIN queries after the negative TTL = %d, want 2", n)
	}

	z.NegativeTTL(0)
	r.LookupTXT(ctx, "gone.test")
	r.LookupTXT(ctx, "gone.test")
	if n := srv.Count("gone.test", dns.TypeTXT); n != 2 {
		t.Errorf("queries with an SOA minimum of 0 = %d, want 2", n)
	}
}

func TestServFailIsTemporary(t *testing.T) {
	z := dnstest.NewZone().MustAddText(`broken.test. 300 IN A 192.0.2.1`).Fault("broken.test", dnstest.AnyType, dnstest.ServFail)
	r, srv, _ := newTest(t, z)
	_, err := r.LookupNetIP(context.Background(), "ip4", "broken.test")
	de := dnsErr(t, err)
	if !de.IsTemporary || de.IsNotFound || de.IsTimeout {
		t.Fatalf("SERVFAIL gave %+v, want IsTemporary only", de)
	}
	before := srv.Count("broken.test", dns.TypeA)
	r.LookupNetIP(context.Background(), "ip4", "broken.test")
	if srv.Count("broken.test", dns.TypeA) == before {
		t.Error("a SERVFAIL was cached")
	}
	// REFUSED is no answer either
	z.Fault("broken.test", dnstest.AnyType, dnstest.Refused)
	_, err = r.LookupNetIP(context.Background(), "ip4", "broken.test")
	if de := dnsErr(t, err); !de.Temporary() {
		t.Fatalf("REFUSED gave %+v, want temporary", de)
	}
}

func TestTimeoutIsTemporary(t *testing.T) {
	z := dnstest.NewZone().Fault("slow.test", dnstest.AnyType, dnstest.Timeout)
	r, srv, _ := newTest(t, z)
	_, err := r.LookupTXT(context.Background(), "slow.test")
	de := dnsErr(t, err)
	if !de.IsTimeout || !de.Temporary() || de.IsNotFound {
		t.Fatalf("timeout gave %+v, want IsTimeout", de)
	}
	if n := srv.Count("slow.test", dns.TypeTXT); n != 2 {
		t.Errorf("attempts = %d, want 2 (one server is asked twice)", n)
	}
}

func TestCallerDeadline(t *testing.T) {
	z := dnstest.NewZone().Fault("slow.test", dnstest.AnyType, dnstest.Timeout)
	r, _, _ := newTest(t, z, func(c *Config) { c.Timeout = conf.Duration(5 * time.Second) })
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	_, err := r.LookupTXT(ctx, "slow.test")
	if de := dnsErr(t, err); !de.Temporary() {
		t.Fatalf("canceled lookup gave %+v, want a temporary error", de)
	}
	if ctx.Err() == nil {
		t.Fatal("lookup returned before the caller gave up, so the test proves nothing")
	}
}

func TestFailover(t *testing.T) {
	dead := dnstest.Start(t, dnstest.NewZone().Fault("a.test", dnstest.AnyType, dnstest.Timeout))
	good := dnstest.Start(t, dnstest.NewZone().MustAddText(`a.test. 300 IN A 192.0.2.1`))
	cfg := &Config{Servers: []string{dead.Addr(), good.Addr()}, Timeout: conf.Duration(400 * time.Millisecond)}
	cfg.Defaults()
	r, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ips, err := r.LookupNetIP(context.Background(), "ip4", "a.test")
	if err != nil || len(ips) != 1 {
		t.Fatalf("got %v, %v; want the second server's answer", ips, err)
	}
	if dead.Count("a.test", dns.TypeA) != 1 || good.Count("a.test", dns.TypeA) != 1 {
		t.Errorf("queries: dead %d, good %d; want 1 each", dead.Count("a.test", dns.TypeA), good.Count("a.test", dns.TypeA))
	}
}

func TestCacheBound(t *testing.T) {
	z := dnstest.NewZone().MustAddText(`a.test. 300 IN A 192.0.2.1`, `b.test. 300 IN A 192.0.2.2`, `c.test. 300 IN A 192.0.2.3`)
	r, srv, _ := newTest(t, z, func(c *Config) { c.CacheSize = 2 })
	ctx := context.Background()
	for _, n := range []string{"a.test", "b.test", "a.test", "c.test"} {
		r.LookupNetIP(ctx, "ip4", n)
	}
	if n, _ := r.CacheUsage(); n != 2 {
		t.Errorf("cache holds %d answers, want 2", n)
	}
	r.LookupNetIP(ctx, "ip4", "a.test") // recently used: kept
	r.LookupNetIP(ctx, "ip4", "b.test") // least recently used: evicted by c
	if got := []int{srv.Count("a.test", dns.TypeA), srv.Count("b.test", dns.TypeA), srv.Count("c.test", dns.TypeA)}; !slices.Equal(got, []int{1, 2, 1}) {
		t.Errorf("queries a, b, c = %v, want [1 2 1]", got)
	}
}

func TestRateCap(t *testing.T) {
	z := dnstest.NewZone().MustAddText(`a.test. 300 IN A 192.0.2.1`, `b.test. 300 IN A 192.0.2.2`)
	r, srv, _ := newTest(t, z, func(c *Config) { c.Rate = 0.001; c.Burst = 1 })
	ctx := context.Background()
	if _, err := r.LookupNetIP(ctx, "ip4", "a.test"); err != nil {
		t.Fatal(err)
	}
	_, err := r.LookupNetIP(ctx, "ip4", "b.test")
	de := dnsErr(t, err)
	if !de.IsTemporary || !strings.Contains(de.Err, "rate") {
		t.Fatalf("over the cap: %+v, want a temporary rate error", de)
	}
	if srv.Count("b.test", dns.TypeA) != 0 {
		t.Error("a query over the rate cap was sent")
	}
	// the cache still answers
	if _, err := r.LookupNetIP(ctx, "ip4", "a.test"); err != nil {
		t.Errorf("cached answer over the cap: %v", err)
	}
}

func TestConcurrentQueriesShareOne(t *testing.T) {
	z := dnstest.NewZone().MustAddText(`a.test. 0 IN A 192.0.2.1`)
	r, srv, _ := newTest(t, z)
	srv.SetDelay(100 * time.Millisecond)
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			if ips, err := r.LookupNetIP(context.Background(), "ip4", "a.test"); err != nil || len(ips) != 1 {
				t.Errorf("got %v, %v", ips, err)
			}
		})
	}
	wg.Wait()
	if n := srv.Count("a.test", dns.TypeA); n >= 10 {
		t.Errorf("10 simultaneous lookups sent %d queries; they should share", n)
	}
}

func TestCNAME(t *testing.T) {
	z := dnstest.NewZone().MustAddText(
		`alias.test. 300 IN CNAME target.test.`,
		`target.test. 100 IN A 192.0.2.9`,
		`loop1.test. 300 IN CNAME loop2.test.`,
		`loop2.test. 300 IN CNAME loop1.test.`,
		`dangling.test. 300 IN CNAME nowhere.test.`,
	)
	r, _, _ := newTest(t, z)
	ctx := context.Background()
	ips, err := r.LookupNetIP(ctx, "ip4", "alias.test")
	if err != nil || len(ips) != 1 || ips[0].String() != "192.0.2.9" {
		t.Fatalf("alias = %v, %v", ips, err)
	}
	_, err = r.LookupNetIP(ctx, "ip4", "loop1.test")
	if de := dnsErr(t, err); de.Temporary() || de.IsNotFound || !strings.Contains(de.Err, "CNAME") {
		t.Fatalf("loop = %+v, want a permanent CNAME error", de)
	}
	_, err = r.LookupNetIP(ctx, "ip4", "dangling.test")
	if de := dnsErr(t, err); !de.IsNotFound {
		t.Fatalf("dangling alias = %+v, want not found", de)
	}
}

func TestBothFamilies(t *testing.T) {
	z := dnstest.NewZone().MustAddText(
		`dual.test. 300 IN A 192.0.2.1`, `dual.test. 300 IN AAAA 2001:db8::1`,
		`v6.test. 300 IN AAAA 2001:db8::2`,
		`half.test. 300 IN A 192.0.2.3`,
	).Fault("half.test", dns.TypeAAAA, dnstest.ServFail).Fault("v4bad.test", dns.TypeA, dnstest.ServFail).AddName("v4bad.test")
	r, _, _ := newTest(t, z)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		want []string
		temp bool
	}{
		{"dual.test", []string{"192.0.2.1", "2001:db8::1"}, false},
		{"v6.test", []string{"2001:db8::2"}, false},
		{"half.test", []string{"192.0.2.3"}, false},
		{"v4bad.test", nil, true},
	} {
		got, err := r.LookupIPAddr(ctx, tc.name)
		var s []string
		for _, a := range got {
			s = append(s, a.IP.String())
		}
		slices.Sort(s)
		if !slices.Equal(s, tc.want) {
			t.Errorf("%s = %v, want %v", tc.name, s, tc.want)
		}
		if tc.temp != (err != nil && dnsErr(t, err).Temporary()) {
			t.Errorf("%s error = %v, want temporary %v", tc.name, err, tc.temp)
		}
	}
}

func TestMXAndPTR(t *testing.T) {
	z := dnstest.NewZone().MustAddText(
		`example.test. 300 IN MX 20 mx2.example.test.`,
		`example.test. 300 IN MX 10 mx1.example.test.`,
		`null.test. 300 IN MX 0 .`,
		`1.2.0.192.in-addr.arpa. 300 IN PTR mail.example.test.`,
		`1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 300 IN PTR v6.example.test.`,
	)
	r, _, _ := newTest(t, z)
	ctx := context.Background()
	mx, err := r.LookupMX(ctx, "example.test")
	if err != nil || len(mx) != 2 || mx[0].Host != "mx1.example.test." || mx[1].Pref != 20 {
		t.Errorf("MX = %v, %v", mx, err)
	}
	mx, err = r.LookupMX(ctx, "null.test")
	if err != nil || len(mx) != 1 || mx[0].Host != "." {
		t.Errorf("null MX = %v, %v", mx, err)
	}
	names, err := r.LookupAddr(ctx, "192.0.2.1")
	if err != nil || !slices.Equal(names, []string{"mail.example.test."}) {
		t.Errorf("PTR v4 = %v, %v", names, err)
	}
	names, err = r.LookupAddr(ctx, "2001:db8::1")
	if err != nil || !slices.Equal(names, []string{"v6.example.test."}) {
		t.Errorf("PTR v6 = %v, %v", names, err)
	}
	_, err = r.LookupAddr(ctx, "192.0.2.99")
	if de := dnsErr(t, err); !de.IsNotFound {
		t.Errorf("missing PTR = %+v", de)
	}
}

func TestBadNamesAreNotFound(t *testing.T) {
	r, srv, _ := newTest(t, dnstest.NewZone())
	for _, n := range []string{"", "a..b", strings.Repeat("x", 64) + ".test", strings.Repeat("abcdefghi.", 26) + "test"} {
		_, err := r.LookupTXT(context.Background(), n)
		if de := dnsErr(t, err); !de.IsNotFound {
			t.Errorf("%q: %+v, want not found", n, de)
		}
	}
	if srv.Queries() != 0 {
		t.Errorf("%d queries sent for impossible names", srv.Queries())
	}
}

func TestResolvConf(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "resolv.conf")
	os.WriteFile(path, []byte("# test\nnameserver 192.0.2.53\nnameserver 2001:db8::53\noptions ndots:1\n"), 0o644)
	old := resolvConf
	resolvConf = path
	defer func() { resolvConf = old }()
	cfg := &Config{}
	cfg.Defaults()
	r, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.Servers(), []string{"192.0.2.53:53", "[2001:db8::53]:53"}; !slices.Equal(got, want) {
		t.Errorf("servers = %v, want %v", got, want)
	}
	resolvConf = filepath.Join(dir, "missing")
	if _, err := New(cfg, nil); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing resolv.conf: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		edit func(*Config)
		path string
	}{
		{func(c *Config) { c.Servers = []string{"127.0.0.1:53", "dns.example"} }, "servers.1"},
		{func(c *Config) { c.Servers = []string{"127.0.0.1:0"} }, "servers.0"},
		{func(c *Config) { c.Timeout = conf.Duration(time.Minute) }, "timeout"},
		{func(c *Config) { c.CacheSize = -1 }, "cache_size"},
		{func(c *Config) { c.CacheBytes = 32 }, "cache_bytes"},
		{func(c *Config) { c.CheckBytes = 64 << 10 }, "check_bytes"},
		{func(c *Config) { c.Rate = -5 }, "rate"},
		{func(c *Config) { c.Burst = -1 }, "burst"},
	} {
		c := &Config{}
		tc.edit(c)
		c.Defaults()
		err := c.Validate()
		var ce *conf.Error
		if !errors.As(err, &ce) || strings.Join(ce.Path, ".") != tc.path {
			t.Errorf("want an error at %s, got %v", tc.path, err)
		}
	}
	c := &Config{Servers: []string{"::1", "[::1]:5353", "192.0.2.1"}}
	c.Defaults()
	if err := c.Validate(); err != nil {
		t.Errorf("valid config: %v", err)
	}
}
