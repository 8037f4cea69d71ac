package limits

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"sluice/limits/counter"
	"sluice/limits/memstore"
	"sluice/policy"
)

// A table of a million customers, written once per test binary: user
// number i at example(i%100).test, with one of a few limits.
var (
	millionOnce sync.Once
	millionPath string
)

func millionTable(b *testing.B) string {
	b.Helper()
	millionOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sluice-quotas")
		if err != nil {
			b.Fatal(err)
		}
		millionPath = filepath.Join(dir, "quotas")
		f, err := os.Create(millionPath)
		if err != nil {
			b.Fatal(err)
		}
		w := bufio.NewWriter(f)
		limits := []string{"100/1h", "500/1h, 1000/1d", "unlimited", "50/1h", "0"}
		fmt.Fprintln(w, "# a million customers")
		for i := range 1_000_000 {
			fmt.Fprintf(w, "sasl_user:user%07d@example%02d.test %s\n", i, i%100, limits[i%len(limits)])
		}
		w.Flush()
		f.Close()
	})
	return millionPath
}

// quotaRule is recipients per SASL user at 200/1h with overrides.
func quotaRule(over string) Rule {
	return Rule{Name: "rcpts", Count: "recipients", Per: "sasl_user", Rate: "200/1h", Overrides: over}
}

// BenchmarkOverridesTableLoad reads the million-line table: ns/op is the
// load, bytes/entry what the loaded table holds per line (heap in use
// after, less before, both after a GC).
func BenchmarkOverridesTableLoad(b *testing.B) {
	path := millionTable(b)
	r := quotaRule("file:" + path)
	c, err := compileRule(&r, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	var keep *table
	var perEntry float64
	for b.Loop() {
		keep = nil
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		t, err := loadTable(c, path)
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		keep = t
		perEntry = float64(after.HeapAlloc-before.HeapAlloc) / float64(t.n)
	}
	if keep.n != 1_000_000 {
		b.Fatalf("%d entries", keep.n)
	}
	b.ReportMetric(perEntry, "bytes/entry")
}

// BenchmarkCheckOverrides is one RCPT of a SASL user on the memory store,
// Check and Settle, under the same rule without overrides, with runtime
// overrides only, and with the million-line table, for a user on the
// table and one who is not (who also tries the domain fallback): the
// differences are what overrides cost.
func BenchmarkCheckOverrides(b *testing.B) {
	path := millionTable(b)
	for _, tc := range []struct {
		name, over, user string
		noRuntime        bool // the store keeps no runtime overrides: the table alone
	}{
		{"none", "", "user0000003@example03.test", false},
		{"runtime", "runtime", "user0000003@example03.test", false},
		{"table1M/listed", "file:" + path, "user0000003@example03.test", false},
		{"table1M/unlisted", "file:" + path, "someone@elsewhere.test", false},
		{"tableonly1M/listed", "file:" + path, "user0000003@example03.test", true},
		{"tableonly1M/unlisted", "file:" + path, "someone@elsewhere.test", true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			st, err := memstore.New(memstore.Config{MaxKeys: 100_000}, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			cfg := Config{Trusted: []string{}, Rules: []Rule{quotaRule(tc.over)}}
			cfg.Rules[0].Rate = "1000000000/1s"
			var store counter.Store = st
			if tc.noRuntime {
				store = countsOnly{st}
			}
			e, err := New(&cfg, nil, Options{Store: store})
			if err != nil {
				b.Fatal(err)
			}
			if tc.over != "" && e.rules[0].over.table != nil {
				// The listed user at a rate no check crosses.
				e.rules[0].over.table.specs[3] = &limitSpec{windows: e.rules[0].windows, text: "fast"}
			}
			benchRcpt(b, e, &policy.Facts{SASLUser: tc.user, Rcpt: "friend@example.org"})
		})
	}
}

// countsOnly is a store with none of the optional interfaces.
type countsOnly struct{ counter.Store }

func benchRcpt(b *testing.B, e *Engine, f *policy.Facts) {
	s := e.NewSession()
	ctx := context.Background()
	b.ReportAllocs()
	cpu := cpuNow()
	for b.Loop() {
		if vs, err := e.Check(ctx, policy.StageRcpt, f, s); err != nil || vs != nil {
			b.Fatalf("check: %v %v", vs, err)
		}
		e.Settle(ctx, s, false)
	}
	reportCPU(b, cpu)
}

// BenchmarkDistinct is one RCPT under a distinct rule of at most 100
// recipient domains per SASL user an hour, on the memory store, for a
// user with 100 domains counted: to one of them (a renewal: every member
// is looked at) and to a new one (refused).
func BenchmarkDistinct(b *testing.B) {
	for _, tc := range []struct {
		name   string
		rcpt   string
		refuse bool
	}{{"known", "x@d042.example", false}, {"new", "x@new.example", true}} {
		b.Run(tc.name, func(b *testing.B) {
			st, err := memstore.New(memstore.Config{MaxKeys: 100_000}, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			cfg := Config{Trusted: []string{}, Rules: []Rule{{Name: "domains", Count: "distinct", Of: "rcpt_domain", Per: "sasl_user", Rate: "100/1h"}}}
			e, err := New(&cfg, nil, Options{Store: st})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			s := e.NewSession()
			f := &policy.Facts{SASLUser: "alice@example.com"}
			for i := range 100 {
				f.Rcpt = fmt.Sprintf("x@d%03d.example", i)
				if vs, _ := e.Check(ctx, policy.StageRcpt, f, s); vs != nil {
					b.Fatalf("domain %d refused", i)
				}
				e.Settle(ctx, s, false)
			}
			f.Rcpt = tc.rcpt
			b.ReportAllocs()
			cpu := cpuNow()
			for b.Loop() {
				vs, err := e.Check(ctx, policy.StageRcpt, f, s)
				if err != nil || (vs != nil) != tc.refuse {
					b.Fatalf("check: %v %v", vs, err)
				}
				e.Settle(ctx, s, tc.refuse)
			}
			reportCPU(b, cpu)
		})
	}
}
