package guard

import (
	"errors"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// A panic under Recover is logged with its place and counted, and the
// function's caller goes on.
func TestRecoverLogsAndCounts(t *testing.T) {
	core, logs := observer.New(zap.ErrorLevel)
	before := countOf("test recover")
	func() {
		defer Recover(zap.New(core), "test recover")
		panic("boom")
	}()
	if got := countOf("test recover") - before; got != 1 {
		t.Fatalf("counted %d panics, want 1", got)
	}
	es := logs.FilterField(zap.String("where", "test recover")).All()
	if len(es) != 1 || es[0].Message != "recovered from a panic" {
		t.Fatalf("log lines: %+v", es)
	}
	if _, ok := es[0].ContextMap()["stack"]; !ok {
		t.Fatal("the log line has no stack")
	}
}

// RecoverErr turns the panic into the function's error.
func TestRecoverErrReturnsError(t *testing.T) {
	f := func() (err error) {
		defer RecoverErr(nil, "test err", &err)
		var m map[string]int
		m["x"] = 1 // nil map write
		return nil
	}
	err := f()
	var pe *PanicError
	if !errors.As(err, &pe) || pe.Where != "test err" {
		t.Fatalf("err = %v, want a PanicError from test err", err)
	}
}

// Go's goroutine survives its panic without taking the process down, and
// the panic is counted.
func TestGoRecovers(t *testing.T) {
	before := countOf("test go")
	Go(nil, "test go", func() { panic(errors.New("boom")) })
	deadline := time.Now().Add(5 * time.Second)
	for countOf("test go") == before {
		if time.Now().After(deadline) {
			t.Fatal("the panic was not counted")
		}
		time.Sleep(time.Millisecond)
	}
}

func countOf(where string) uint64 {
	for _, c := range Counts() {
		if c.Where == where {
			return c.N
		}
	}
	return 0
}
