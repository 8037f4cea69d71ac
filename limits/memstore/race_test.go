//go:build race

package memstore

// raceEnabled shrinks the single-goroutine property tests under -race,
// where they find nothing new and run ten times slower.
const raceEnabled = true
