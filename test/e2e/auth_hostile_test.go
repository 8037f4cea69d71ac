package e2e

// A hostile sender zone against the sluice binary: every message's sender
// domain answers with thousands of addresses, and sluice's memory must
// stay bounded while each message still gets its SPF result.

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/d--j/go-milter"

	"sluice/test/dnstest"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

const (
	hostileMessages = 4000
	// hostileRSSBound is what hostileMessages messages from
	// dnstest.HostileZone may add to sluice's resident memory under the
	// default [dns] settings: three times cache_bytes (32 MiB), since the
	// Go heap grows to about twice what is live before it collects and
	// the runtime keeps freed pages a while, and room for the answers of
	// the message in progress. The cache fills after ~2,500 messages;
	// kept whole, the answers of one message take ~300 KB.
	hostileRSSBound = 128 << 20
)

// TestAuthHostileZoneMemory sends 4,000 messages on one milter connection
// to the sluice binary, each from a fresh name of dnstest.HostileZone
// (4,000 or 1,800 A records a name, or 29 KB of TXT records; SPF "a
// -all"), with [dns] left at its defaults. sluice's resident memory must
// grow by less than hostileRSSBound, measured every 200 messages;
// afterwards a name whose answer is too large to read gives SPF
// permerror, the others fail, and a client whose address is the last of
// 1,800 passes.
func TestAuthHostileZoneMemory(t *testing.T) {
	testenv.Require(t)
	srv := dnstest.Start(t, dnstest.HostileZone())
	maddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	sl := sluicetest.StartSluice(t, fmt.Sprintf(`authserv_id = %q
[log]
level = "info"
[metrics]
listen = %q
[dns]
servers = [%q]
timeout = "2s"
rate = 5000
[spf]
enabled = true
`, authID, maddr, srv.Addr()))
	rss := func() float64 { return scrape(t, maddr).value("process_resident_memory_bytes") }
	mb := func(b float64) string { return fmt.Sprintf("%.1f MB", b/(1<<20)) }

	s := milterSession(t, sl.Listen, "192.0.2.1")
	send := func(i int) {
		t.Helper()
		act, err := s.Mail(dnstest.HostileSender(i), "")
		if err != nil || act.Type != milter.ActionContinue {
			t.Fatalf("message %d: %+v %v", i, act, err)
		}
		if err := s.Abort(nil); err != nil {
			t.Fatal(err)
		}
	}
	// Warm up, so that the baseline is a running server's.
	for i := range 50 {
		send(hostileMessages + i)
	}
	base := rss()
	peak := base
	var curve []string // messages:MB grown
	start := time.Now()
	for i := range hostileMessages {
		send(i)
		if (i+1)%200 == 0 {
			r := rss()
			curve = append(curve, fmt.Sprintf("%d:%.0f", i+1, (r-base)/(1<<20)))
			peak = max(peak, r)
			if r-base > hostileRSSBound {
				t.Fatalf("after %d messages sluice's RSS is %s, %s over the %s it had: over the bound of %s",
					i+1, mb(r), mb(r-base), mb(base), mb(hostileRSSBound))
			}
		}
	}
	t.Logf("%d messages in %v: RSS %s before, peak %s (+%s), bound +%s; MB grown by messages sent: %s",
		hostileMessages, time.Since(start).Round(time.Millisecond), mb(base), mb(peak), mb(peak-base), mb(hostileRSSBound),
		strings.Join(curve, " "))

	for i, want := range []string{"permerror", "fail", "fail"} { // huge, big, wide
		if got := receivedSPF(t, s, dnstest.HostileSender(i)); !strings.HasPrefix(got, want+" ") {
			t.Errorf("%s: Received-SPF %q, want %s", dnstest.HostileSender(i), got, want)
		}
	}
	last := milterSession(t, sl.Listen, "10.1.7.7") // the last of the 1,800
	if got := receivedSPF(t, last, dnstest.HostileSender(1)); !strings.HasPrefix(got, "pass ") {
		t.Errorf("the last of %d addresses: Received-SPF %q, want pass", dnstest.BigAddrs, got)
	}
}

// receivedSPF sends one whole message from sender on s and returns the
// Received-SPF value sluice adds.
func receivedSPF(t *testing.T, s *milter.ClientSession, sender string) string {
	t.Helper()
	for _, step := range []func() (*milter.Action, error){
		func() (*milter.Action, error) { return s.Mail(sender, "") },
		func() (*milter.Action, error) { return s.Rcpt(rcpt, "") },
		s.DataStart,
		func() (*milter.Action, error) { return s.HeaderField("Subject", "hostile zone", nil) },
		s.HeaderEnd,
	} {
		if act, err := step(); err != nil || act.Type != milter.ActionContinue {
			t.Fatalf("%s: %+v %v", sender, act, err)
		}
	}
	// go-milter answers accept to sluice's continue at the end.
	mods, act, err := s.BodyReadFrom(strings.NewReader("hostile zone\r\n"))
	if err != nil || act.Type != milter.ActionAccept {
		t.Fatalf("%s: end of message: %+v %v", sender, act, err)
	}
	for _, m := range mods {
		if strings.EqualFold(m.HeaderName, "Received-SPF") {
			t.Logf("%s: Received-SPF: %s", sender, m.HeaderValue)
			return m.HeaderValue
		}
	}
	t.Fatalf("%s: no Received-SPF in %+v", sender, mods)
	return ""
}
