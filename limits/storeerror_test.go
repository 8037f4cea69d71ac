package limits

import (
	"context"
	"errors"
	"net/netip"
	"sync/atomic"
	"testing"

	"sluice/limits/counter"
	"sluice/limits/memstore"
	"sluice/policy"
)

// flakyStore is a store that fails while down, as an unreachable Redis does.
type flakyStore struct {
	counter.Store
	down atomic.Bool
}

var errDown = errors.New("store down")

func (f *flakyStore) Do(ctx context.Context, reqs []counter.Request) error {
	if f.down.Load() {
		return errDown
	}
	return f.Store.Do(ctx, reqs)
}

type recorder map[string]int

func (r recorder) RecordFallback(policy string, n int, err error) { r[policy] += n }

func newMem(t *testing.T) *memstore.Store {
	st, err := memstore.New(memstore.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func failingEngine(t *testing.T) (*Engine, *flakyStore, *memstore.Store, recorder) {
	t.Helper()
	shared, local := &flakyStore{Store: newMem(t)}, newMem(t)
	rule := func(name, domain, onErr, action string) Rule {
		return Rule{Name: name, Count: "messages", Per: "sender", Rate: "2/1h", Action: policy.MustAction(action),
			Match: Match{SenderDomain: []string{domain}}, OnStoreError: onErr}
	}
	cfg := &Config{Trusted: []string{}, Rules: []Rule{
		rule("open", "allow.test", "", "tempfail"), // the [store] default: allow
		rule("closed", "tempfail.test", "tempfail", "reject"),
		rule("local", "local.test", "local", "tempfail"),
		{Name: "conns", Count: "concurrent", Per: "client_ip", Max: 1, OnStoreError: "local"},
	}}
	cfg.Defaults()
	if err := cfg.Validate(nil); err != nil {
		t.Fatal(err)
	}
	rec := recorder{}
	e, err := New(cfg, nil, Options{Store: shared, Fallback: local, Recorder: rec})
	if err != nil {
		t.Fatal(err)
	}
	return e, shared, local, rec
}

func mail(t *testing.T, e *Engine, sender string) ([]policy.Verdict, error) {
	ctx := context.Background()
	s := e.NewSession()
	f := policy.Facts{ClientIP: netip.MustParseAddr("192.0.2.1"), Sender: sender}
	vs, err := e.Check(ctx, policy.StageMail, &f, s)
	vs = append([]policy.Verdict(nil), vs...)
	e.Settle(ctx, s, len(vs) > 0)
	return vs, err
}

func TestOnStoreError(t *testing.T) {
	e, shared, _, rec := failingEngine(t)
	// One counted in the shared store while it works.
	for _, d := range []string{"allow.test", "tempfail.test", "local.test"} {
		if vs, err := mail(t, e, "a@"+d); err != nil || vs != nil {
			t.Fatalf("%s while up: %v %v", d, vs, err)
		}
	}
	shared.down.Store(true)
	logged := 0
	for i := range 3 {
		vs, err := mail(t, e, "a@allow.test")
		if vs != nil {
			t.Errorf("allow: message %d refused: %+v", i+1, vs)
		}
		if err != nil {
			logged++
		}
	}
	for i := range 2 {
		vs, err := mail(t, e, "a@tempfail.test")
		if len(vs) != 1 || vs[0].Action != policy.ActionTempfail || vs[0].Reply != storeDown || vs[0].Source != "closed" {
			t.Fatalf("tempfail: message %d: %+v, want the store's 451 4.3.0 (not the rule's reject)", i+1, vs)
		}
		if err != nil {
			logged++
		}
	}
	// Local counts from zero in the fallback: 2 admitted, the 3rd refused
	// by the rule itself.
	for i := range 3 {
		vs, err := mail(t, e, "a@local.test")
		if refused := len(vs) > 0; refused != (i == 2) {
			t.Errorf("local: message %d refused=%v: %+v", i+1, refused, vs)
		}
		if i == 2 && (vs[0].Source != "local" || vs[0].Action != policy.ActionTempfail || vs[0].Reply == storeDown) {
			t.Errorf("local refusal: %+v", vs[0])
		}
		if err != nil {
			logged++
		}
	}
	if logged != 3 {
		t.Errorf("%d of 8 failures returned for logging, want the first 3 (sampled)", logged)
	}
	if rec["allow"] != 3 || rec["tempfail"] != 2 || rec["local"] != 3 {
		t.Errorf("recorded %v, want allow 3, tempfail 2, local 3", rec)
	}
	// Back up: counting resumes where the shared store was (1 of 2).
	shared.down.Store(false)
	for _, d := range []string{"allow.test", "local.test"} {
		if vs, _ := mail(t, e, "a@"+d); vs != nil {
			t.Errorf("%s: 2nd in the shared store refused", d)
		}
		if vs, _ := mail(t, e, "a@"+d); len(vs) != 1 {
			t.Errorf("%s: 3rd in the shared store not refused", d)
		}
	}
}

// A slot taken in the fallback while the store was down is given back to
// the fallback, even when the store is up again by then.
func TestLocalSlotGivenBackLocally(t *testing.T) {
	e, shared, local, _ := failingEngine(t)
	ctx := context.Background()
	shared.down.Store(true)
	s := e.NewSession()
	f := policy.Facts{ClientIP: netip.MustParseAddr("192.0.2.5")}
	if vs, _ := e.Check(ctx, policy.StageConnect, &f, s); vs != nil {
		t.Fatalf("connect: %+v", vs)
	}
	e.Settle(ctx, s, false)
	shared.down.Store(false)
	level := func() int64 {
		peek := []counter.Request{{Key: []byte("conns:c:client_ip:192.0.2.5"), Kind: counter.KindConcurrent, Op: counter.OpPeek, Burst: 1, Cost: 1}}
		if err := local.Do(ctx, peek); err != nil {
			t.Fatal(err)
		}
		return peek[0].Level
	}
	if l := level(); l != 1 {
		t.Fatalf("the fallback holds %d slots, want 1", l)
	}
	e.Close(ctx, s)
	if l := level(); l != 0 {
		t.Errorf("the fallback still holds %d slots after Close", l)
	}
}
