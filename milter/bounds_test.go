package milter

import (
	"strings"
	"testing"
	"time"

	"sluice/conf"
	"sluice/limits"
	"sluice/policy"
)

// TestMaxConnectionsRefuses fills max_connections with sessions that talk
// and checks that each connection past it is closed at once, counted, and
// logged in sampled lines; that the sessions open go on; and that a place
// freed is taken again.
func TestMaxConnectionsRefuses(t *testing.T) {
	h := newHostileServerWith(t, func(c *Config) { c.MaxConnections = 3 }, policy.ModeEnforce, 0)
	var open []*rawConn
	for i := 0; i < 3; i++ {
		r := h.dial()
		r.t = t
		r.negotiate()
		open = append(open, r)
	}
	h.waitSessions(3)
	const refusals = 20
	for i := 0; i < refusals; i++ {
		r := h.dial()
		r.t = t
		r.send('O', make([]byte, 12))
		if !r.hungUp() {
			t.Fatalf("connection %d past max_connections was served", i+1)
		}
	}
	if n := h.conns.refusals(); n != refusals {
		t.Errorf("%d refusals counted, want %d", n, refusals)
	}
	lines := h.logs.FilterMessage("MTA connection refused: max_connections open").All()
	if len(lines) == 0 || len(lines) >= refusals {
		t.Errorf("%d log lines for %d refusals, want at least one and fewer than the refusals", len(lines), refusals)
	}
	if n := h.srv.Sessions(); n != 3 {
		t.Errorf("%d sessions open, want the 3 that were admitted", n)
	}
	for i, r := range open {
		if code := r.connect("192.0.2.1"); code != 'c' {
			t.Fatalf("session %d after the refusals: connect answered %q", i, code)
		}
	}
	open[0].c.Close()
	h.waitSessions(2)
	again := h.dial()
	again.t = t
	again.negotiate()
	h.checkNoPanics()
}

// TestMaxConnectionsReclaimsSilent fills max_connections with connections
// that say nothing and one session: a new connection takes the place of
// the one silent the longest, once it has been silent for a tenth of
// idle_timeout, so that silent peers cannot keep the MTA out.
func TestMaxConnectionsReclaimsSilent(t *testing.T) {
	const idle = 5 * time.Second
	h := newHostileServerWith(t, func(c *Config) { c.MaxConnections = 3 }, policy.ModeEnforce, idle)
	silent := []*rawConn{h.dial(), h.dial()}
	h.waitSessions(2)
	talking := h.dial()
	talking.t = t
	talking.negotiate()
	h.waitSessions(3)
	time.Sleep(idle/10 + 200*time.Millisecond)
	for i := range silent {
		r := h.dial()
		r.t = t
		r.negotiate() // served: it took a silent one's place
		if code := r.connect("192.0.2.2"); code != 'c' {
			t.Fatalf("new connection %d: connect answered %q", i, code)
		}
	}
	// Which silent one goes first depends on which of their goroutines
	// began to wait first; both must have gone.
	for i := range silent {
		if !silent[i].hungUp() {
			t.Fatalf("silent connection %d was not closed to make room", i)
		}
	}
	if n := h.conns.cuts("silent"); n != 2 {
		t.Errorf("%d connections counted as closed to make room, want 2", n)
	}
	if n := h.logs.FilterMessage("MTA connection closed to make room: max_connections open").Len(); n != 2 {
		t.Errorf("%d log lines for connections closed to make room, want 2", n)
	}
	if code := talking.connect("192.0.2.3"); code != 'c' {
		t.Fatalf("the session that talked: connect answered %q", code)
	}
	h.checkNoPanics()
}

// TestBoundsValidate: the bounds keep their defaults when left out, and a
// value out of range is an error that names its key and the range.
func TestBoundsValidate(t *testing.T) {
	var c Config
	c.Defaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if c.MaxHeaderBytes != DefaultMaxHeaderBytes || c.MaxMacroBytes != DefaultMaxMacroBytes || c.MaxConnections != 0 {
		t.Errorf("defaults: %+v", c.Bounds)
	}
	for _, tc := range []struct {
		set  func(*Bounds)
		want string
	}{
		{func(b *Bounds) { b.MaxConnections = -1 }, "max_connections: -1 is out of range"},
		{func(b *Bounds) { b.MaxConnections = 1 << 21 }, "max_connections: 2097152 is out of range"},
		{func(b *Bounds) { b.MaxHeaderBytes = 100 << 10 }, "max_header_bytes: 102400 is out of range (131072 to"},
		{func(b *Bounds) { b.MaxMacroBytes = 2 << 30 }, "max_macro_bytes: 2147483648 is out of range (16384 to 1073741824 bytes)"},
	} {
		c := Config{}
		c.Defaults()
		tc.set(&c.Bounds)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", c.Bounds, err, tc.want)
		}
	}
}

// TestConnectionsFor: half of the descriptors left after the reserve, and
// at least one whatever the limit.
func TestConnectionsFor(t *testing.T) {
	for _, c := range []struct{ nofile, reserved, want int }{
		{65536, 100, 32718},
		{256, 64, 96},
		{64, 100, 1},
	} {
		if got := ConnectionsFor(c.nofile, c.reserved); got != c.want {
			t.Errorf("ConnectionsFor(%d, %d) = %d, want %d", c.nofile, c.reserved, got, c.want)
		}
	}
}

// TestMaxConnectionsSparesBusySessions: a session sluice is working on —
// here pausing before its reply — is not silent, however long ago its MTA
// last sent something; at max_connections a new connection is refused
// rather than cut it off.
func TestMaxConnectionsSparesBusySessions(t *testing.T) {
	const (
		idle  = 5 * time.Second // a place is taken after 500ms of silence
		pause = 5 * time.Second
	)
	h := newHostileServerWith(t, func(c *Config) { c.MaxConnections = 1 }, policy.ModeEnforce, idle,
		limits.Rule{Name: "tarpit", Count: "messages", Per: "client_ip", Rate: "1/1h", Action: policy.MustAction("delay"), Delay: conf.Duration(pause)})
	r := h.connected(t, "192.0.2.30")
	r.mailCodes("first@example.org")
	r.send('M', cstr("<second@example.org>")) // over the rate: answered after the pause
	time.Sleep(idle/10 + 300*time.Millisecond)
	late := h.dial()
	late.t = t
	late.send('O', make([]byte, 12))
	if !late.hungUp() {
		t.Fatal("a connection past max_connections was served while the one session was busy")
	}
	if code, _, err := r.read(pause + 5*time.Second); err != nil || code != 'c' {
		t.Fatalf("the busy session's MAIL answered %q, %v; want continue after the pause", code, err)
	}
	if n, cut := h.conns.refusals(), h.conns.cuts("silent"); n != 1 || cut != 0 {
		t.Errorf("%d refused and %d closed to make room, want 1 and 0", n, cut)
	}
	h.checkNoPanics()
}
