package memstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"sluice/limits/counter"
)

// benchKeys makes n keys shaped like the engine's ("rule:window:dimension")
// for IPv6 /64 clients, about 40 bytes each, laid out one after the other:
// the engine builds each key in a buffer that is in cache, so the
// benchmark should not pay a cache miss per key that the store would not.
func benchKeys(n int) [][]byte {
	keys := make([][]byte, n)
	arena := make([]byte, 0, n*48)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range keys {
		var a [16]byte
		a[0], a[1] = 0x20, 0x01
		for j := 2; j < 8; j++ {
			a[j] = byte(rng.Uint32())
		}
		start := len(arena)
		arena = append(arena, "conn-per-ip:0:ip:"...)
		arena = netip.AddrFrom16(a).AppendTo(arena)
		keys[i] = arena[start:len(arena):len(arena)]
	}
	return keys
}

// benchRule never fills up within a benchmark: every Do takes a unit and
// is admitted, the common case of a mail server under its limits.
func benchRule(key []byte) counter.Request {
	return counter.Request{Key: key, Kind: counter.KindRate, Op: counter.OpTake,
		Interval: int64(time.Hour) / 1000, Burst: 1 << 24, Cost: 1, Blocking: true}
}

// benchStore makes a store with room for keys (max_keys 10% above, so
// that uneven shards evict none) and takes one unit on each.
func benchStore(b *testing.B, keys [][]byte) *Store {
	b.Helper()
	return benchStoreMax(b, keys, max(len(keys)*11/10, 1000))
}

func benchStoreMax(b *testing.B, keys [][]byte, maxKeys int) *Store {
	b.Helper()
	s, err := New(Config{MaxKeys: maxKeys}, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	req := make([]counter.Request, 1)
	for _, k := range keys {
		req[0] = benchRule(k)
		if err := s.Do(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	return s
}

// cpuTime is the CPU time this process has used, all threads.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuMeter reports, next to the wall time, the CPU time per op: on a
// machine shared with other work the wall time measures the machine's
// load as much as the code, the CPU time far less.
type cpuMeter struct{ start time.Duration }

func startCPU(b *testing.B) *cpuMeter {
	b.ResetTimer()
	return &cpuMeter{cpuTime()}
}

// stop reports cpu-ns/op and returns the CPU time used.
func (m *cpuMeter) stop(b *testing.B) time.Duration {
	used := cpuTime() - m.start
	b.ReportMetric(float64(used.Nanoseconds())/float64(b.N), "cpu-ns/op")
	return used
}

// BenchmarkDo is a single-rule check, on the wall clock, on one key kept
// in cache and on a million keys visited in random order.
func BenchmarkDo(b *testing.B) {
	for _, n := range []int{1, 1_000_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			keys := benchKeys(n)
			s := benchStore(b, keys)
			defer s.Close()
			ctx := context.Background()
			req := make([]counter.Request, 1)
			b.ReportAllocs()
			cpu := startCPU(b)
			for i := range b.N {
				// In key order: the keys' hashes scatter the table
				// accesses; the key bytes themselves are read in sequence.
				req[0] = benchRule(keys[i%n])
				if err := s.Do(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
			cpu.stop(b)
		})
	}
	b.Run("denied", func(b *testing.B) {
		// A key over its limit: also records the key as hot.
		s := benchStore(b, nil)
		defer s.Close()
		ctx := context.Background()
		req := make([]counter.Request, 1)
		key := []byte("msgs-per-sender:0:sender:flood@example.org")
		b.ReportAllocs()
		cpu := startCPU(b)
		for range b.N {
			req[0] = counter.Request{Key: key, Kind: counter.KindRate,
				Op: counter.OpTake, Interval: int64(time.Hour) / 10, Burst: 10, Cost: 1, Blocking: true}
			if err := s.Do(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
		cpu.stop(b)
	})
}

// BenchmarkParallel runs single-rule checks on every core over a million
// keys and reports checks per second of wall time, and per second of all
// cores' CPU time (what the machine could do were it not shared:
// checks per CPU-second times the cores used).
func BenchmarkParallel(b *testing.B) {
	const n = 1_000_000
	keys := benchKeys(n)
	s := benchStore(b, keys)
	defer s.Close()
	b.ReportAllocs()
	cpu := startCPU(b)
	b.RunParallel(func(pb *testing.PB) {
		i := rand.IntN(n)
		ctx := context.Background()
		req := make([]counter.Request, 1)
		for pb.Next() {
			i = (i + 1) % n
			req[0] = benchRule(keys[i])
			if err := s.Do(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	used := cpu.stop(b)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "checks/s")
	b.ReportMetric(float64(b.N)/used.Seconds()*float64(runtime.GOMAXPROCS(0)), "checks/cpu-s×cores")
}

// BenchmarkBytesPerKey sends a million keys to a store with the default
// max_keys (1,000,000) and reports the heap it holds, after a collection,
// per key it tracks. The shards fill unevenly, so a few thousand keys
// were evicted: the tracked count is reported too. Run with -benchtime=1x.
func BenchmarkBytesPerKey(b *testing.B) {
	const n = 1_000_000
	keys := benchKeys(n)
	var before, after runtime.MemStats
	for range b.N {
		runtime.GC()
		runtime.ReadMemStats(&before)
		s := benchStoreMax(b, keys, DefaultMaxKeys)
		runtime.GC()
		runtime.ReadMemStats(&after)
		tracked := s.Len()
		if tracked < n*99/100 {
			b.Fatalf("only %d of %d keys tracked", tracked, n)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(tracked), "bytes/key")
		b.ReportMetric(float64(tracked), "keys")
		s.Close()
		runtime.KeepAlive(s)
	}
}

// BenchmarkFlood sends new random IPv6 /128 keys to a full store: each
// Do inserts, evicts, and (burst 1) names the key as hot.
func BenchmarkFlood(b *testing.B) {
	s, _ := New(Config{MaxKeys: 1_000_000}, zap.NewNop())
	defer s.Close()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 0, 64)
	req := make([]counter.Request, 1)
	cpu := startCPU(b)
	for range b.N {
		var a [16]byte
		for j := range a {
			a[j] = byte(rng.Uint32())
		}
		buf = netip.AddrFrom16(a).AppendTo(append(buf[:0], "conn-per-ip:0:ip:"...))
		req[0] = counter.Request{Key: buf, Kind: counter.KindRate, Op: counter.OpTake,
			Interval: int64(time.Minute) / 10, Burst: 1, Cost: 1, Blocking: true}
		if err := s.Do(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	cpu.stop(b)
}

// BenchmarkHash is the table's hash of an engine-shaped key: SipHash-2-4
// under the store's seed, and the unseeded xxhash64 it replaced.
func BenchmarkHash(b *testing.B) {
	key := []byte("msgs-per-sender:0:sender:alice.example+news@example.org")
	seed := newHashSeed()
	var sum uint64
	b.Run("keyed", func(b *testing.B) {
		for b.Loop() {
			sum += seed.hash(key, counter.KindRate)
		}
	})
	b.Run("unseeded", func(b *testing.B) {
		for b.Loop() {
			sum += legacyHash(key, counter.KindRate)
		}
	})
	runtime.KeepAlive(sum)
}
