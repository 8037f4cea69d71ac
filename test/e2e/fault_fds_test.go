package e2e

// Faults: file descriptors run short. sluice keeps its milter connections
// under max_connections, derived from its descriptor limit, so that peers
// holding idle connections cannot take the descriptors its snapshot, its
// metrics and the MTA's own sessions need.

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"sluice/metrics"
	"sluice/milter"
	"sluice/test/mta"
	"sluice/test/sluicetest"
	"sluice/test/testenv"
)

// TestFaultFDLimit starts sluice with a descriptor limit of 256 and opens
// 300 milter connections that negotiate, send CONNECT and go silent, as
// Postfix would before a client that never speaks. sluice must keep at
// most max_connections open — each connection past it refused at once, or
// (on a machine slow enough that the flood outlasts a tenth of
// idle_timeout) taking the place of the one silent the longest — counted
// and logged; keep writing its snapshot and answering /metrics; and serve
// a real Postfix session once the idle ones have been silent for a tenth
// of idle_timeout.
func TestFaultFDLimit(t *testing.T) {
	testenv.Require(t)
	const (
		fdLimit = 256
		peers   = 300
		idle    = 60 * time.Second
	)
	maddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	sl := sluicetest.NewSluice(t)
	sl.NoFile = fdLimit
	snap := filepath.Join(sl.Dir, "counters.snap")
	sl.Start(fmt.Sprintf("idle_timeout = %q\n%s\n[store]\nsnapshot = %q\nsnapshot_interval = \"1s\"\n\n[metrics]\nlisten = %q\n",
		idle, opsLimit("100/1h", ""), snap, maddr))
	pf := mta.StartPostfix(t, mta.PostfixOptions{Milter: sl.Listen, Main: map[string]string{
		"milter_connect_timeout": "10s", "milter_command_timeout": "10s"}})

	// The start-up line says what sluice derived from its limit.
	start := sl.Find(func(l sluicetest.LogLine) bool { return l.Msg() == "listening" })[0]
	max := milter.ConnectionsFor(fdLimit, milter.BaseReserve+1+metrics.MaxConnections)
	if start.Str("fd_limit") != strconv.Itoa(fdLimit) || start.Str("max_connections") != strconv.Itoa(max) {
		t.Fatalf("start-up line %v; want fd_limit %d, max_connections %d", start, fdLimit, max)
	}

	_, addr, err := testenv.SplitSpec(sl.Listen)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < peers; i++ {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		// Negotiation, connect macros and CONNECT, as Postfix sends them;
		// a refused connection fails somewhere here, which is expected.
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		c.Write(milterPacket('O', binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(
			binary.BigEndian.AppendUint32(nil, 6), 1), 0))) // version 6, SMFIF_ADDHDRS, no protocol flags
		ip := fmt.Sprintf("10.9.%d.%d", i>>8, i&255)
		c.Write(milterPacket('D', []byte("C{client_addr}\x00"+ip+"\x00")))
		c.Write(milterPacket('C', []byte("client.example\x004\x00\x19"+ip+"\x00")))
	}
	flooded := time.Now()

	// Every connection is open, was refused, or made room for a later
	// one (once the close hooks of those have run).
	var open, refused, silent float64
	err = pollFor(10*time.Second, func() bool {
		m := scrape(t, maddr)
		open, refused = m.value("sluice_sessions_open"), m.value("sluice_connections_refused_total")
		silent = m.value("sluice_connections_closed_total", "reason=silent")
		return open+refused+silent == peers && m.value("sluice_connections_max") == float64(max)
	})
	t.Logf("%d connections opened: %v sessions open, %v refused, %v closed to make room; max_connections %d",
		peers, open, refused, silent, max)
	if err != nil || open > float64(max) {
		t.Errorf("%v sessions open, %v refused, %v closed to make room of %d connections, max_connections %d",
			open, refused, silent, peers, max)
	}
	for _, c := range []struct {
		n   float64
		msg string
	}{
		{refused, "MTA connection refused: max_connections open"},
		{silent, "MTA connection closed to make room: max_connections open"},
	} {
		if c.n > 0 && len(sl.Find(func(l sluicetest.LogLine) bool { return l.Msg() == c.msg })) == 0 {
			t.Errorf("%v counted, and no log line %q", c.n, c.msg)
		}
	}

	// The snapshot is still written while the connections are held.
	before, err := os.Stat(snap)
	if err != nil {
		t.Fatalf("no snapshot: %v", err)
	}
	if err := pollFor(10*time.Second, func() bool {
		fi, err := os.Stat(snap)
		return err == nil && fi.ModTime().After(before.ModTime())
	}); err != nil {
		t.Error("the snapshot was not written again while the connections were held")
	}
	if failing := scrape(t, maddr).value("sluice_snapshot_write_failing"); failing != 0 {
		t.Errorf("sluice_snapshot_write_failing = %v", failing)
	}

	// A real Postfix session, once the held connections have been silent
	// for a tenth of idle_timeout, is served.
	time.Sleep(time.Until(flooded.Add(idle/10 + 500*time.Millisecond)))
	c := session(t, pf.Addr, "192.0.2.90")
	trs := sendN(t, c, "fds@example.test", 1)
	c.Quit()
	if !trs[0].Accepted() {
		t.Fatalf("Postfix session with the milter connections held: %v", trs[0])
	}
	if msgs := pf.WaitDelivered(1, 30*time.Second); len(msgs) != 1 {
		t.Fatalf("%d messages delivered, want 1", len(msgs))
	}
	if len(sl.Find(func(l sluicetest.LogLine) bool {
		return l.Msg() == "MTA connection closed to make room: max_connections open"
	})) == 0 {
		t.Error("no log line for the connection closed to make room for Postfix's")
	}
	if n := len(sl.Find(func(l sluicetest.LogLine) bool {
		return l.Msg() == "counter snapshot not written; counters are kept in memory and the write is retried"
	})); n > 0 {
		t.Errorf("%d snapshot writes failed", n)
	}
}

// milterPacket frames a milter command: length, code, data.
func milterPacket(code byte, data []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(1+len(data)))
	return append(append(b, code), data...)
}
