package auth

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
	"go.uber.org/zap/zaptest"

	"sluice/policy"
)

// fakeDNS is a resolver made of maps. A name in none of them is NXDOMAIN;
// a name in one map only is NODATA for the other types.
type fakeDNS struct {
	mu    sync.Mutex
	txt   map[string][]string
	mx    map[string][]*net.MX
	ip    map[string][]netip.Addr
	ptr   map[string][]string // by address
	errs  map[string]error    // by "TYPE name" or "* name"
	hook  func(ctx context.Context, qtype, name string) error
	calls []string
}

func newFake() *fakeDNS {
	return &fakeDNS{txt: map[string][]string{}, mx: map[string][]*net.MX{}, ip: map[string][]netip.Addr{},
		ptr: map[string][]string{}, errs: map[string]error{}}
}

func norm(n string) string { return strings.ToLower(strings.TrimSuffix(n, ".")) }

var (
	errTimeout  = &net.DNSError{Err: "i/o timeout", IsTimeout: true}
	errServFail = &net.DNSError{Err: "server misbehaving", IsTemporary: true}
)

func nxdomain(name string) error {
	return &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

func (f *fakeDNS) addIP(name string, ips ...string) *fakeDNS {
	for _, s := range ips {
		f.ip[norm(name)] = append(f.ip[norm(name)], netip.MustParseAddr(s))
	}
	return f
}

func (f *fakeDNS) fail(qtype, name string, err error) *fakeDNS {
	f.errs[qtype+" "+norm(name)] = err
	return f
}

// lookup records the call and returns the error set for it, if any.
func (f *fakeDNS) lookup(ctx context.Context, qtype, name string) error {
	f.mu.Lock()
	f.calls = append(f.calls, qtype+" "+norm(name))
	hook := f.hook
	err := f.errs[qtype+" "+norm(name)]
	if err == nil {
		err = f.errs["* "+norm(name)]
	}
	f.mu.Unlock()
	if hook != nil {
		if herr := hook(ctx, qtype, norm(name)); herr != nil {
			return herr
		}
	}
	return err
}

func (f *fakeDNS) exists(name string) bool {
	n := norm(name)
	_, a := f.txt[n]
	_, b := f.mx[n]
	_, c := f.ip[n]
	return a || b || c
}

func (f *fakeDNS) LookupTXT(ctx context.Context, name string) ([]string, error) {
	if err := f.lookup(ctx, "TXT", name); err != nil {
		return nil, err
	}
	if !f.exists(name) {
		return nil, nxdomain(name)
	}
	return f.txt[norm(name)], nil
}

func (f *fakeDNS) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	if err := f.lookup(ctx, "MX", name); err != nil {
		return nil, err
	}
	if !f.exists(name) {
		return nil, nxdomain(name)
	}
	return f.mx[norm(name)], nil
}

func (f *fakeDNS) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	ips, err := f.LookupNetIP(ctx, "ip", host)
	var out []net.IPAddr
	for _, ip := range ips {
		out = append(out, net.IPAddr{IP: ip.AsSlice()})
	}
	return out, err
}

func (f *fakeDNS) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	qtype := map[string]string{"ip": "A+AAAA", "ip4": "A", "ip6": "AAAA"}[network]
	if err := f.lookup(ctx, qtype, host); err != nil {
		return nil, err
	}
	if !f.exists(host) {
		return nil, nxdomain(host)
	}
	var out []netip.Addr
	for _, ip := range f.ip[norm(host)] {
		if network == "ip" || (network == "ip4") == ip.Is4() {
			out = append(out, ip)
		}
	}
	return out, nil
}

func (f *fakeDNS) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	rev, _ := dns.ReverseAddr(addr)
	if err := f.lookup(ctx, "PTR", rev); err != nil {
		return nil, err
	}
	names, ok := f.ptr[addr]
	if !ok {
		return nil, nxdomain(rev)
	}
	return names, nil
}

func (f *fakeDNS) called(prefix string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		if strings.HasPrefix(c, prefix) {
			out = append(out, c)
		}
	}
	return out
}

// cfgWith is a valid config edited by the test.
func cfgWith(edit func(*Config)) *Config {
	cfg := &Config{AuthservID: "mx.sluice.test"}
	edit(cfg)
	cfg.Defaults()
	return cfg
}

// checker builds a Checker over the fake from a config edited by the test.
func checker(t *testing.T, f *fakeDNS, edit func(*Config)) *Checker {
	t.Helper()
	cfg := cfgWith(edit)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	c, err := newChecker(cfg, zaptest.NewLogger(t), f, 0)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// session is what a test client says.
type session struct {
	ip, helo, sender, user string
	trusted                bool
}

func (s session) facts() *policy.Facts {
	f := &policy.Facts{Helo: s.helo, Sender: s.sender, SASLUser: s.user, Trusted: s.trusted, ClientName: "unknown"}
	if s.ip != "" {
		f.ClientIP = netip.MustParseAddr(s.ip)
	}
	return f
}

func mail(c *Checker, s session) ([]policy.Verdict, *Message) {
	var m Message
	vs := c.Mail(context.Background(), s.facts(), nil, &m)
	return vs, &m
}

// result finds the result of one check.
func result(m *Message, check string) (Result, bool) {
	for _, r := range m.Results() {
		if r.Check == check {
			return r, true
		}
	}
	return Result{}, false
}

// verdict finds the verdict of one check.
func verdict(vs []policy.Verdict, source string) (policy.Verdict, bool) {
	i := slices.IndexFunc(vs, func(v policy.Verdict) bool { return v.Source == source })
	if i < 0 {
		return policy.Verdict{}, false
	}
	return vs[i], true
}

// reply renders a verdict's reply as the MTA would get it, whatever the
// mode.
func reply(v policy.Verdict, s session) string {
	if v.Reply == nil {
		return ""
	}
	return v.Reply.Render(&v, &policy.Env{ClientIP: s.ip, Sender: s.sender})
}

// wantReply runs a session and checks the reply of one check's verdict.
func wantReply(t *testing.T, c *Checker, s session, check, want string) {
	t.Helper()
	vs, _ := mail(c, s)
	v, ok := verdict(vs, check)
	if got := reply(v, s); !ok || got != want {
		t.Errorf("%s: reply %q, want %q", check, got, want)
	}
}

func expect(t *testing.T, m *Message, vs []policy.Verdict, check, value string, action policy.Action) Result {
	t.Helper()
	r, ok := result(m, check)
	if !ok {
		if value != "" {
			t.Fatalf("%s: no result, want %s (results %+v)", check, value, m.Results())
		}
		return r
	}
	if value == "" {
		t.Fatalf("%s ran: %+v, want it skipped", check, r)
	}
	if r.Value != value || r.Action != action {
		t.Fatalf("%s = %s/%v (%s), want %s/%v", check, r.Value, r.Action, r.Detail, value, action)
	}
	v, hasV := verdict(vs, check)
	if hasV != (action != policy.ActionNone) {
		t.Fatalf("%s: verdict %+v present=%v, want present=%v", check, v, hasV, action != policy.ActionNone)
	}
	if hasV && (v.Action != action || v.Detail != r.Detail) {
		t.Fatalf("%s: verdict %+v does not match result %+v", check, v, r)
	}
	return r
}
