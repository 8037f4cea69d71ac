package limits

import (
	"context"
	"net/netip"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"sluice/limits/counter"
	"sluice/limits/memstore"
	"sluice/policy"
)

// benchEngine is one rule, messages per sender at rate, on a memory store
// sized for keys tracked keys.
func benchEngine(b *testing.B, keys int, rate string) *Engine {
	b.Helper()
	st, err := memstore.New(memstore.Config{MaxKeys: keys}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	cfg := Config{Trusted: []string{}, Rules: []Rule{{
		Name: "msgs-per-sender", Count: "messages", Per: "sender", Rate: rate,
	}}}
	e, err := New(&cfg, nil, Options{Store: st})
	if err != nil {
		b.Fatal(err)
	}
	return e
}

// cpuNow is the CPU time this process has used so far, every thread.
func cpuNow() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU adds cpu-ns/op, the CPU time per op since start: on a machine
// shared with other work, ns/op (wall time) measures the load as much as
// the code.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuNow()-start)/float64(b.N), "cpu-ns/op")
}

// BenchmarkCheckSettle is one message's MAIL FROM on a single-rule policy:
// Engine.Check and Engine.Settle on the memory store, with a sender
// address as the key.
func BenchmarkCheckSettle(b *testing.B) {
	// One key checked over and over: a rate it never crosses keeps every
	// check on the common path.
	benchMail(b, benchEngine(b, memstore.DefaultMaxKeys, "1000000000/1s"))
}

// BenchmarkCheckEngineOnly is BenchmarkCheckSettle on a store that only
// says yes: what the engine itself costs (rule walk, key building,
// bookkeeping), apart from the store.
func BenchmarkCheckEngineOnly(b *testing.B) {
	cfg := Config{Trusted: []string{}, Rules: []Rule{{Name: "msgs-per-sender", Count: "messages", Per: "sender", Rate: "10/1s"}}}
	e, err := New(&cfg, nil, Options{Store: yesStore{}})
	if err != nil {
		b.Fatal(err)
	}
	benchMail(b, e)
}

// benchMail checks one sender's MAIL FROM over and over on e.
func benchMail(b *testing.B, e *Engine) {
	s := e.NewSession()
	f := &policy.Facts{ClientIP: netip.MustParseAddr("192.0.2.25"), Sender: "Alice.Example+news@Example.ORG", Listener: "smtpd"}
	ctx := context.Background()
	b.ReportAllocs()
	cpu := cpuNow()
	for b.Loop() {
		if vs, err := e.Check(ctx, policy.StageMail, f, s); err != nil || vs != nil {
			b.Fatalf("check: %v %v", vs, err)
		}
		e.Settle(ctx, s, false)
	}
	reportCPU(b, cpu)
}

// yesStore admits everything and keeps nothing.
type yesStore struct{ counter.Store }

func (yesStore) Do(ctx context.Context, reqs []counter.Request) error {
	for i := range reqs {
		reqs[i].Allowed = true
	}
	return nil
}

func (yesStore) Allows(ctx context.Context) (map[string]time.Time, error) { return nil, nil }

// BenchmarkCheckParallel1M is Check+Settle from every core at once over a
// million senders, each tracked by the store: the throughput of a busy
// relay. It reports checks/s.
//
// Each goroutine writes the sender of the next check into a buffer of its
// own, as the milter has the address fresh from the MTA's packet: reading
// it from a table of a million strings would add two cache misses per
// check that are the benchmark's, not the engine's. The store's table,
// which does not fit in the cache at a million keys, is what is measured.
func BenchmarkCheckParallel1M(b *testing.B) {
	const n = 1 << 20
	// A key stays tracked for 864s per message; each is checked a few
	// dozen times at most, never near its 100. max_keys is 10% above the
	// keys, as an admin would size it: uneven shards evict none.
	e := benchEngine(b, n*11/10, "100/1d")
	ctx := context.Background()
	// Every key tracked before the clock starts.
	s := e.NewSession()
	var sb senderBuf
	for i := range n {
		f := policy.Facts{Sender: sb.set(i)}
		e.Check(ctx, policy.StageMail, &f, s)
		e.Settle(ctx, s, false)
	}
	if got := counter.Len(e.store); got < n*99/100 {
		b.Fatalf("store tracks %d keys, want about %d", got, n)
	}
	var next atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu := time.Now(), cpuNow()
	b.RunParallel(func(pb *testing.PB) {
		s := e.NewSession()
		var f policy.Facts
		var sb senderBuf
		// Each goroutine walks all keys from its own place, by an odd
		// stride (a full cycle mod 2^20), so cores do not move in step.
		i := int(next.Add(1) * 7919)
		for pb.Next() {
			i = (i + 104729) & (n - 1)
			f.Sender = sb.set(i)
			if _, err := e.Check(ctx, policy.StageMail, &f, s); err != nil {
				b.Error(err)
				return
			}
			e.Settle(ctx, s, false)
		}
	})
	used := cpuNow() - cpu
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "checks/s")
	// What both cores would do were the machine not shared: checks per
	// second of CPU time, times the cores used.
	b.ReportMetric(float64(b.N)/used.Seconds()*float64(runtime.GOMAXPROCS(0)), "checks/cpu-s×cores")
}

// senderBuf holds "userNNNNNNN@exampleNN.org" for one index at a time.
type senderBuf struct{ b [32]byte }

// set writes the sender of index i and returns it as a string that lives
// until the next call: the engine copies what it keeps.
func (s *senderBuf) set(i int) string {
	buf := append(s.b[:0], "user0000000@example00.org"...)
	for j, v := 10, i; j >= 4; j, v = j-1, v/10 {
		buf[j] = byte('0' + v%10)
	}
	buf[19], buf[20] = byte('0'+i%97/10), byte('0'+i%97%10)
	return unsafe.String(&buf[0], len(buf))
}
