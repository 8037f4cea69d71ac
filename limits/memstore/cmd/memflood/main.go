// Command memflood floods a memory store with random IPv6 /128 client keys
// and prints the process's peak RSS: the check that max_keys bounds memory.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"time"

	"go.uber.org/zap"

	"sluice/limits/counter"
	"sluice/limits/memstore"
)

func main() {
	keys := flag.Int("keys", 10_000_000, "distinct random IPv6 /128 keys to send")
	maxKeys := flag.Int("max-keys", 1_000_000, "the store's max_keys")
	burst := flag.Int64("burst", 1, "rule burst; 1 makes every key hot, the costliest case (names kept)")
	limitMB := flag.Int("limit-mb", 150, "exit 1 if the peak RSS is above this")
	flag.Parse()

	baseRSS := status("VmRSS")
	s, err := memstore.New(memstore.Config{MaxKeys: *maxKeys}, zap.NewNop())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	const prefix = "conn-per-ip:0:ip:"
	buf := make([]byte, 0, 64)
	req := make([]counter.Request, 1)
	denied := 0
	start := time.Now()
	for range *keys {
		var a [16]byte
		for j := 0; j < 16; j += 8 {
			v := rng.Uint64()
			for k := range 8 {
				a[j+k] = byte(v >> (8 * k))
			}
		}
		buf = netip.AddrFrom16(a).AppendTo(append(buf[:0], prefix...))
		req[0] = counter.Request{Key: buf, Kind: counter.KindRate, Op: counter.OpTake,
			Interval: int64(time.Minute) / 10, Burst: *burst, Cost: 1, Blocking: true}
		if err := s.Do(ctx, req); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if !req[0].Allowed {
			denied++
		}
	}
	took := time.Since(start)
	hot, _ := s.Hot(ctx, 1<<20)
	tracked := s.Len()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	peak := status("VmHWM")
	fmt.Printf("keys sent         %d (%.2f M/s, %d denied)\n", *keys, float64(*keys)/took.Seconds()/1e6, denied)
	fmt.Printf("max_keys          %d\n", *maxKeys)
	fmt.Printf("keys tracked      %d\n", tracked)
	fmt.Printf("hot names kept    %d\n", len(hot))
	fmt.Printf("heap after GC     %.1f MB\n", float64(ms.HeapAlloc)/(1<<20))
	fmt.Printf("huge pages        %.1f MB\n", float64(rollup("AnonHugePages"))/1024)
	fmt.Printf("RSS before store  %.1f MB\n", float64(baseRSS)/1024)
	fmt.Printf("peak RSS          %.1f MB (limit %d MB)\n", float64(peak)/1024, *limitMB)
	s.Close()
	if tracked > *maxKeys || peak/1024 > int64(*limitMB) {
		fmt.Println("FAIL")
		os.Exit(1)
	}
	fmt.Println("ok")
}

// status returns a kB field of /proc/self/status.
func status(field string) int64 { return procField("/proc/self/status", field) }

// rollup returns a kB field of /proc/self/smaps_rollup.
func rollup(field string) int64 { return procField("/proc/self/smaps_rollup", field) }

func procField(path, field string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), &kb)
			return kb
		}
	}
	return -1
}
