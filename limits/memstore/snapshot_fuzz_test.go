package memstore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"maps"
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"go.uber.org/zap"

	"sluice/limits/counter/countertest"
)

// fuzzMaxKeys is small, so that the fuzzer's entries fill the table and
// eviction runs during a load.
const fuzzMaxKeys = 64

func fuzzStore(t testing.TB, now func() int64) *Store {
	s, err := New(Config{MaxKeys: fuzzMaxKeys}, zap.NewNop(), WithClock(now))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// encoded is the snapshot s would write.
func encoded(s *Store) []byte {
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	s.encodeSnapshot(w)
	w.Flush()
	return buf.Bytes()
}

// FuzzSnapshot loads any bytes as a snapshot; with sealed, the bytes are
// the records and get a good end record and checksum, so that the fuzzer
// reaches the installing pass too. Whatever they hold, the load must not
// panic; a file it refuses leaves the store empty (nothing half loaded);
// a file it takes stays within max_keys and the exemption bound, and
// what the store then writes loads back into the same state.
func FuzzSnapshot(f *testing.F) {
	clock := countertest.NewClock()
	seed := fuzzStore(f, clock.Now)
	for i := range 40 {
		take(f, seed, countertest.Rate(string(rune('a'+i%26))+"@example.org", 10, time.Hour, 10))
	}
	for range 11 {
		take(f, seed, countertest.Rate("sender:full@example.org", 10, time.Hour, 10))
	}
	seed.SetAllow(context.Background(), "sender:vip@example.org", time.Unix(0, clock.Now()).Add(time.Hour))
	for _, m := range []string{"a.example", "b.example", "c.example"} {
		take(f, seed, countertest.Distinct("d:d:sasl_user:a", 2, time.Hour, m))
	}
	r := countertest.Rate("r:0:sasl_user:a", 1, time.Hour, 1)
	r.Group = 1
	take(f, seed, r)
	take(f, seed, r, countertest.Restrict("r:x:sasl_user:a", 1, 0))
	seed.NoteHeld(context.Background(), []byte("r:x:sasl_user:a"), "Q1")
	seed.SetOverride(context.Background(), []byte("r:o:sasl_user:b"), []byte("5/1h|1|root"), time.Time{})
	valid := encoded(seed)
	seed.Close()
	legacy := append([]byte(snapMagic), 1, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	header := append(append([]byte(snapMagic), 2, 0), make([]byte, 8+16)...)
	f.Add(valid, false)
	f.Add(valid[:len(valid)-9], true) // the records alone
	f.Add([]byte{}, false)
	f.Add([]byte(snapMagic), false)
	f.Add(valid[:len(valid)/2], false)
	f.Add(append(header, 'E', 0xff, 0xff, 0xff, 0x7f), true)
	f.Add(append(header, 'E', 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0), true)
	f.Add(append(header, 'A', 1, 2, 3, 4, 5, 6, 7, 8, 0xff, 0xff), true)
	f.Add(append(header, 'H', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 'k'), true)
	if v1, err := os.ReadFile("testdata/version1.snap"); err == nil {
		f.Add(v1, false)
		f.Add(v1[:len(v1)-9], true)
	}
	f.Add(append(legacy, 'E', 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0), true)
	f.Add([]byte("# sluice configuration\n"), false)
	f.Add(append(header, 'D', 7, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0), true)
	f.Add(append(header, 'R', 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2, 'Q', '1', 1, 0, 'k'), true)
	f.Add(append(header, 'O', 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 'k', 1, 0, 'v'), true)

	f.Fuzz(func(t *testing.T, data []byte, sealed bool) {
		if sealed {
			data = append(bytes.Clone(data), tagEnd)
			data = binary.LittleEndian.AppendUint64(data, xxhash.Sum64(data))
		}
		s := fuzzStore(t, clock.Now)
		defer s.Close()
		_, _, err := s.loadFrom(bytes.NewReader(data))
		allows, _ := s.Allows(context.Background())
		hot, _ := s.Hot(context.Background(), -1)
		restr, _ := s.Restrictions(context.Background())
		overs, _ := s.Overrides(context.Background())
		if err != nil {
			if s.Len() != 0 || len(allows) != 0 || len(hot) != 0 || len(restr) != 0 || len(overs) != 0 {
				t.Fatalf("refused (%v) but %d keys, %d exemptions, %d hot names, %d restrictions, %d overrides loaded",
					err, s.Len(), len(allows), len(hot), len(restr), len(overs))
			}
			return
		}
		// Keys of the table and distinct sets (whose members count
		// against max_keys on their own) are each within max_keys.
		if s.Len() > 2*fuzzMaxKeys || len(allows) > maxAllows || len(restr) > maxRestrictions || len(overs) > maxOverrides {
			t.Fatalf("%d keys, %d exemptions, %d restrictions, %d overrides loaded", s.Len(), len(allows), len(restr), len(overs))
		}

		again := fuzzStore(t, clock.Now)
		defer again.Close()
		if _, _, err := again.loadFrom(bytes.NewReader(encoded(s))); err != nil {
			t.Fatalf("what the store wrote does not load: %v", err)
		}
		allowsAgain, _ := again.Allows(context.Background())
		hotAgain, _ := again.Hot(context.Background(), -1)
		restrAgain, _ := again.Restrictions(context.Background())
		oversAgain, _ := again.Overrides(context.Background())
		if !reflect.DeepEqual(restr, restrAgain) || !reflect.DeepEqual(overs, oversAgain) {
			t.Fatalf("written and loaded back: restrictions %v, overrides %v; had %v, %v", restrAgain, oversAgain, restr, overs)
		}
		if again.Len() != s.Len() || !maps.Equal(allows, allowsAgain) || !reflect.DeepEqual(hot, hotAgain) {
			t.Fatalf("written and loaded back: %d keys, exemptions %v, hot %v; had %d, %v, %v",
				again.Len(), allowsAgain, hotAgain, s.Len(), allows, hot)
		}
	})
}
