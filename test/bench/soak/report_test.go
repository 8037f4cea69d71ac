package main

import (
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// tenSeconds is n samples of 10 s; every sixth, from the sixth on, closes
// one of the load generator's minute windows with p99 mail = its index.
func tenSeconds(n int) []sample {
	var out []sample
	for i := range n {
		s := sample{
			at: time.Duration(i+1) * 10 * time.Second, length: 10 * time.Second,
			msgsPerSec: 500, cpuPerMsg: 0.3, p99: map[string]float64{"mail": 1}, ownP99: map[string]float64{"mail": 0.1},
			ctl: &controlSample{msgsPerSec: 500, cpuPerMsg: 0.6, p99: map[string]float64{"mail": 2}},
		}
		if (i+1)%6 == 0 {
			s.winP99 = map[string]float64{"mail": float64(i)}
			s.ownWinP99 = map[string]float64{"mail": float64(i) / 10}
			s.ctl.winP99 = map[string]float64{"mail": float64(2 * i)}
		}
		out = append(out, s)
	}
	return out
}

// A judged minute is the load generator's own window, with its p99s over
// every command, not the median of the 10 s ones; a stretch before the
// first window it closed is left out, and so is a partial one at the end.
func TestWindowsAreTheLoadGeneratorsMinutes(t *testing.T) {
	ws := windows(tenSeconds(40)[3:], time.Minute)
	if len(ws) != 5 {
		t.Fatalf("%d windows, want 5 (samples 6-11, 12-17, ..., 30-35)", len(ws))
	}
	for k, w := range ws {
		end := 11 + 6*k
		if w.at != time.Duration(end+1)*10*time.Second || w.length != time.Minute {
			t.Errorf("window %d ends at %v and lasts %v, want %v and 1m", k, w.at, w.length, time.Duration(end+1)*10*time.Second)
		}
		if w.p99["mail"] != float64(end) || w.ctl.p99["mail"] != float64(2*end) {
			t.Errorf("window %d: p99 mail %v, the do-nothing's %v; want the closing record's, %d and %d",
				k, w.p99["mail"], w.ctl.p99["mail"], end, 2*end)
		}
		if w.ownP99["mail"] != float64(end)/10 {
			t.Errorf("window %d: sluice's own p99 mail %v, want the closing sample's, %v", k, w.ownP99["mail"], float64(end)/10)
		}
		if w.cpuPerMsg != 0.3 || w.ctl.cpuPerMsg != 0.6 || w.msgsPerSec != 500 {
			t.Errorf("window %d: CPU %v and %v, %v msgs/s", k, w.cpuPerMsg, w.ctl.cpuPerMsg, w.msgsPerSec)
		}
	}
}

// Without closing records (a soak.csv from before them) a window is six
// samples from the first, and its p99 the median of theirs.
func TestWindowsOfAnOlderCSV(t *testing.T) {
	ss := tenSeconds(13)
	for i := range ss {
		ss[i].winP99, ss[i].ctl = nil, nil
		ss[i].p99 = map[string]float64{"mail": float64(i % 6)}
	}
	ws := windows(ss, time.Minute)
	if len(ws) != 2 {
		t.Fatalf("%d windows, want 2", len(ws))
	}
	if ws[0].p99["mail"] != 2.5 || ws[0].ctl != nil {
		t.Errorf("p99 mail %v, want the median of 0..5, 2.5; control %v, want none", ws[0].p99["mail"], ws[0].ctl)
	}
}

// With the do-nothing milter beside sluice, its CPU is judged as a ratio to
// the do-nothing's and the raw curve only shown; either way the tail judged
// is sluice's own time per stage, and the round trips' are only shown.
func TestControlMovesTheVerdictToRatios(t *testing.T) {
	judgedNames := func(ss []sample) []string {
		var out []string
		for _, c := range curves(ss) {
			if c.judged {
				out = append(out, c.name)
			}
		}
		return out
	}
	base := []string{"messages/s", "RSS MB", "Go heap in use MB", "goroutines", "open fds"}
	with := tenSeconds(6)
	if got, want := judgedNames(with), append(base[:5:5], "CPU / do-nothing's", "own p99 ms mail"); !reflect.DeepEqual(got, want) {
		t.Errorf("judged with the do-nothing milter: %q, want %q", got, want)
	}
	without := tenSeconds(6)
	for i := range without {
		without[i].ctl = nil
	}
	if got, want := judgedNames(without), append(base[:5:5], "CPU ms/message", "own p99 ms mail"); !reflect.DeepEqual(got, want) {
		t.Errorf("judged alone: %q, want %q", got, want)
	}
}

// What the CSV holds reads back the same, the do-nothing milter's figures
// and the closed windows' p99s with it, so -rejudge judges what the run did.
func TestCSVReadsBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "soak.csv")
	want := tenSeconds(12)
	want[3].ctl = nil
	if err := writeCSV(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := readCSV(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("read back\n%+v\nwant\n%+v", got[5], want[5])
	}
}
