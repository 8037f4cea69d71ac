package e2e

// Faults: MTA connections that go silent. sluice sets deadlines
// go-milter lacks, so 5,000 idle milter connections cost a bounded amount
// of memory and are closed, and their memory released, after idle_timeout.

import (
	"fmt"
	"net"
	"os"
	"regexp"
	"testing"
	"time"

	"sluice/test/sluicetest"
	"sluice/test/testenv"

	"github.com/d--j/go-milter"
)

const (
	idleConns = 5000
	// idleBytesPerConn bounds what one idle milter connection may cost
	// sluice in resident memory: its goroutine's stack, go-milter's
	// session, sluice's session, the buffered reader and the socket.
	idleBytesPerConn = 24 << 10
)

// TestFaultIdleConnections opens 5,000 milter sessions the way Postfix
// does (negotiate, macros, CONNECT) from 5,000 client addresses under the
// built-in policy, and leaves them silent. sluice's resident memory must
// grow by at most idleBytesPerConn each; after idle_timeout every
// connection must be closed by sluice, its goroutine gone and its
// concurrency slot released, and the memory given back.
func TestFaultIdleConnections(t *testing.T) {
	testenv.Require(t)
	maddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	const idle = 10 * time.Second
	sl := sluicetest.StartSluice(t, fmt.Sprintf("idle_timeout = %q\n%s\n[metrics]\nlisten = %q\n",
		idle, builtinPolicy(t), maddr))
	_, addr, err := testenv.SplitSpec(sl.Listen)
	if err != nil {
		t.Fatal(err)
	}
	type sample struct{ rss, heap, goroutines, sessions float64 }
	take := func() sample {
		m := scrape(t, maddr)
		return sample{m.value("process_resident_memory_bytes"), m.value("go_memstats_heap_inuse_bytes"),
			m.value("go_goroutines"), m.value("sluice_sessions_open")}
	}
	mb := func(b float64) string { return fmt.Sprintf("%.1f MB", b/(1<<20)) }

	// Warm up the process the way traffic would, so that the baseline is
	// a running server's and not a freshly started one's.
	openIdle(t, addr, 200, 0)()
	time.Sleep(time.Second)
	base := take()

	start := time.Now()
	closeAll := openIdle(t, addr, idleConns, 1000)
	t.Logf("%d sessions opened in %v", idleConns, time.Since(start).Round(time.Millisecond))
	full := take()
	grew := full.rss - base.rss
	t.Logf("before: RSS %s, heap in use %s, %v goroutines", mb(base.rss), mb(base.heap), base.goroutines)
	t.Logf("with %d idle sessions: RSS %s (+%s, %.1f KB each), heap in use %s, %v goroutines, %v sessions open",
		idleConns, mb(full.rss), mb(grew), grew/idleConns/1024, mb(full.heap), full.goroutines, full.sessions)
	if full.sessions != idleConns {
		t.Fatalf("sluice has %v sessions open, want %d", full.sessions, idleConns)
	}
	if grew > idleConns*idleBytesPerConn {
		t.Errorf("%d idle sessions cost %s of RSS, over the bound of %d KB each (%s)",
			idleConns, mb(grew), idleBytesPerConn>>10, mb(idleConns*idleBytesPerConn))
	}

	// sluice cuts them off after idle_timeout; the client sees EOF.
	closed := closeAll // the client side, for the cleanup below
	defer closed()
	if err := pollFor(idle+30*time.Second, func() bool { return take().sessions == 0 }); err != nil {
		t.Fatalf("%v sessions still open %v after they went silent (idle_timeout %v)", take().sessions, idle+30*time.Second, idle)
	}
	t.Logf("all sessions closed by sluice %v after they went silent", time.Since(start).Round(time.Second))

	// Traffic goes on (and lets the runtime collect); the memory of the
	// idle sessions must be freed: their goroutines gone and the heap back
	// to where it was. The Go runtime then returns pages to the kernel at
	// its own pace, keeping what its heap goal allows, so RSS is reported
	// but only asked to have come down.
	var after sample
	heapGrew := full.heap - base.heap
	err = pollFor(60*time.Second, func() bool {
		openIdle(t, addr, 50, 0)()
		after = take()
		return after.goroutines <= base.goroutines+20 && after.heap <= base.heap+heapGrew/4 && after.rss < full.rss-grew/4
	})
	t.Logf("after: RSS %s, heap in use %s, %v goroutines", mb(after.rss), mb(after.heap), after.goroutines)
	if err != nil {
		t.Errorf("memory not freed: heap in use %s (was %s before, %s with the idle sessions), RSS %s (%s, %s), %v goroutines (was %v)",
			mb(after.heap), mb(base.heap), mb(full.heap), mb(after.rss), mb(base.rss), mb(full.rss), after.goroutines, base.goroutines)
	}
	// The concurrency slots went with the sessions: the same clients may
	// connect again.
	again := openIdle(t, addr, 100, 0)
	again()
}

// builtinPolicy is cmd/sluice/default.toml without its listen line (the
// harness writes its own).
func builtinPolicy(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../cmd/sluice/default.toml")
	if err != nil {
		t.Fatal(err)
	}
	return regexp.MustCompile(`(?m)^listen\s*=.*$`).ReplaceAllString(string(b), "")
}

// openIdle opens n milter sessions as Postfix does up to CONNECT, each
// from its own client address (offset+i), checks each was let in, and
// returns a function that closes them.
func openIdle(t *testing.T, addr string, n, offset int) func() {
	t.Helper()
	client := milter.NewClient("tcp", addr, milter.WithDialer(&net.Dialer{Timeout: 10 * time.Second}),
		milter.WithReadTimeout(10*time.Second), milter.WithWriteTimeout(10*time.Second))
	sessions := make([]*milter.ClientSession, 0, n)
	closeAll := func() {
		for _, s := range sessions {
			s.Close()
		}
		sessions = nil
	}
	for i := 0; i < n; i++ {
		k := offset + i + 1
		ip := fmt.Sprintf("10.%d.%d.%d", k>>16&255, k>>8&255, k&255)
		macros := milter.NewMacroBag()
		macros.Set("j", "mx.example.test")
		macros.Set("{daemon_name}", "smtpd")
		macros.Set("{client_addr}", ip)
		s, err := client.Session(macros)
		if err != nil {
			closeAll()
			t.Fatalf("session %d: %v", i, err)
		}
		sessions = append(sessions, s)
		act, err := s.Conn("client.example", milter.FamilyInet, 25, ip)
		if err != nil || act.Type != milter.ActionContinue {
			closeAll()
			if err == nil {
				err = fmt.Errorf("answered %v", act)
			}
			t.Fatalf("session %d from %s: %v", i, ip, err)
		}
	}
	return closeAll
}
