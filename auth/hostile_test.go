package auth

import (
	"context"
	"runtime"
	"testing"

	"sluice/test/dnstest"
)

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// hostileHeapBound is what 400 messages from dnstest.HostileZone may leave
// on the heap with the default [dns] bounds: the answers the resolver keeps
// are counted in bytes (~13 KB a message here), whatever the zone serves.
// Keeping every record as parsed took ~250 KB a message.
const hostileHeapBound = 16 << 20

// TestHostileZoneHeapBounded sends 400 messages whose sender domains come
// from dnstest.HostileZone through the SPF check, over the real resolver
// and a real DNS server, with the default [dns] bounds. What stays on the
// heap afterwards must be under hostileHeapBound, and each message must
// still get an SPF result.
func TestHostileZoneHeapBounded(t *testing.T) {
	c, _ := realChecker(t, dnstest.HostileZone(), func(cfg *Config) { patient(cfg); cfg.SPF.Enabled = true })
	const n = 400
	before := heapInUse()
	results := map[string]int{}
	for i := range n {
		_, m := mail(c, session{ip: "192.0.2.1", helo: "client.example", sender: dnstest.HostileSender(i)})
		r, _ := result(m, "spf")
		results[r.Value]++
		if r.Value == "none" || r.Value == "temperror" {
			t.Logf("message %d: %s", i, r.Detail)
		}
	}
	after := heapInUse()
	runtime.KeepAlive(c) // the cache is what is measured
	grew := int64(after) - int64(before)
	t.Logf("%d messages: heap %d KB before, %d KB after (%+d KB, %d B a message); SPF results %v",
		n, before>>10, after>>10, grew>>10, grew/n, results)
	if results["none"] > 0 || results["temperror"] > 0 {
		t.Errorf("SPF results %v: every message should have been evaluated", results)
	}
	if grew > hostileHeapBound {
		t.Errorf("the heap grew by %d MB after %d messages, over the bound of %d MB", grew>>20, n, hostileHeapBound>>20)
	}
}

// BenchmarkHostileZone measures what one message from dnstest.HostileZone
// leaves on the heap (retained-B/msg) and the heap after b.N of them
// (heap-MB), over the real resolver with the default [dns] bounds. Run
// it with a fixed count, e.g. -benchtime=2000x.
func BenchmarkHostileZone(b *testing.B) {
	c, _ := realChecker(b, dnstest.HostileZone(), func(cfg *Config) { patient(cfg); cfg.SPF.Enabled = true })
	before := heapInUse()
	i := 0
	for b.Loop() {
		var m Message
		c.Mail(context.Background(), session{ip: "192.0.2.1", helo: "client.example", sender: dnstest.HostileSender(i)}.facts(), nil, &m)
		i++
	}
	b.StopTimer()
	after := heapInUse()
	runtime.KeepAlive(c)
	b.ReportMetric(float64(int64(after)-int64(before))/float64(i), "retained-B/msg")
	b.ReportMetric(float64(after)/(1<<20), "heap-MB")
}
