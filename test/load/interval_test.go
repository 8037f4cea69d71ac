package main

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// The record that closes a window carries the p99 of every command
// answered since the window before it closed, across workers; the others
// carry none.
func TestWindowP99CoversTheWholeWindow(t *testing.T) {
	a, b := &worker{}, &worker{}
	var out bytes.Buffer
	r := &reporter{w: &out, workers: []*worker{a, b}, start: time.Now(), window: 2, tag: "sluice"}
	add := func(w *worker, ms ...int) {
		for _, m := range ms {
			w.add(stMail, time.Duration(m)*time.Millisecond)
		}
	}
	// First window: 200 commands at 1 ms and 4 at 50 ms (2% of them), so
	// its p99 is 50 ms.
	for range 100 {
		add(a, 1)
		add(b, 1)
	}
	add(a, 50, 50)
	r.write()
	add(b, 50, 50)
	r.write()
	// Second window: only fast commands; the slow ones are not in it.
	for range 300 {
		add(a, 2)
	}
	r.write()
	r.write()

	var recs []Interval
	dec := json.NewDecoder(&out)
	for dec.More() {
		var iv Interval
		if err := dec.Decode(&iv); err != nil {
			t.Fatal(err)
		}
		recs = append(recs, iv)
	}
	if len(recs) != 4 {
		t.Fatalf("%d records, want 4", len(recs))
	}
	for i, want := range []float64{0, 50, 0, 2} {
		got, ok := recs[i].WindowP99["mail"]
		if want == 0 && ok || want != 0 && got != want {
			t.Errorf("record %d: window p99 mail %v (present %v), want %v", i+1, got, ok, want)
		}
		if recs[i].Tag != "sluice" {
			t.Errorf("record %d: tag %q", i+1, recs[i].Tag)
		}
	}
}
