package memstore

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"

	"sluice/limits/counter"
)

// BenchmarkSnapshotLoad starts a store of the default max_keys from a
// snapshot of a million keys: the time and memory a restart costs. The
// table itself (about 21 MB) is in every op's bytes. The clock stands
// still, so that no key drains between the write and the loads; the CPU
// time of the loads alone is reported too (cpu-ns/op), the wall time on
// a shared machine being mostly its load.
func BenchmarkSnapshotLoad(b *testing.B) {
	path := filepath.Join(b.TempDir(), "counters.snap")
	cfg := Config{Snapshot: path}
	now := time.Now().UnixNano()
	clock := WithClock(func() int64 { return now })
	s, err := New(cfg, zap.NewNop(), clock)
	if err != nil {
		b.Fatal(err)
	}
	req := make([]counter.Request, 1)
	for _, k := range benchKeys(1_000_000) {
		req[0] = benchRule(k)
		if err := s.Do(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(fi.Size())
	want := s.Len()
	var cpu time.Duration
	b.ResetTimer()
	for range b.N {
		start := cpuTime()
		s, err := New(cfg, zap.NewNop(), clock)
		cpu += cpuTime() - start
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if s.Len() != want {
			b.Fatalf("%d keys loaded, %d written", s.Len(), want)
		}
		s.closed.Store(true) // Close without writing: only the load is measured
		close(s.stop)
		<-s.done
		b.StartTimer()
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
}
