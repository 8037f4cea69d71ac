package dkim_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	"sluice/auth/dkim"
	"sluice/auth/dkim/dkimtest"
	"sluice/auth/resolver"
	"sluice/test/dnstest"
)

// BenchmarkVerify50KB measures the verification of a 50 KB message signed
// with RSA 2048 (relaxed/relaxed, the common case) or ed25519, streamed in
// the 64 KiB chunks Postfix sends, the key in the resolver's cache: what
// sluice adds per signed message once DNS has answered. cpu-ns/op is the
// process's CPU time (user and system, every goroutine) per message.
func BenchmarkVerify50KB(b *testing.B) {
	for _, k := range []*dkimtest.Key{dkimtest.RSA2048("bench.example", "rsa"), dkimtest.Ed25519("bench.example", "ed")} {
		b.Run(k.Selector, func(b *testing.B) {
			srv := dnstest.Start(b, dnstest.NewZone().MustAddText(k.ZoneLine()))
			cfg := resolver.Config{Servers: []string{srv.Addr()}}
			cfg.Defaults()
			res, err := resolver.New(&cfg, nil)
			if err != nil {
				b.Fatal(err)
			}
			v := verifier(b, res, dkim.Config{})
			msg := dkimtest.Sign(dkimtest.Message("a@bench.example", "b@example.net", "bench", 50<<10), k, dkimtest.Options{Relaxed: true})
			fs, body := dkimtest.Split(msg)
			fields := make([]dkim.Field, len(fs))
			for i, f := range fs {
				fields[i] = dkim.Field(f)
			}
			run := func() []dkim.Result {
				m := v.Start(fields)
				for rest := body; len(rest) > 0; {
					n := min(len(rest), 65535)
					m.Write(rest[:n])
					rest = rest[n:]
				}
				return m.Finish(context.Background())
			}
			if rs := run(); len(rs) != 1 || rs[0].Value != dkim.Pass {
				b.Fatalf("%+v", rs)
			}
			before := srv.Queries()
			cpu0 := cpuTime()
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				run()
			}
			b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
			if n := srv.Queries() - before; n != 0 {
				b.Fatalf("%d queries: the key was not cached", n)
			}
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
