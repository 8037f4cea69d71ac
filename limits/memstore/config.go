package memstore

import (
	"time"

	"sluice/conf"
)

// Config holds the memory store's keys of the [store] table.
//
// max_keys is also the memory knob: the table is sized for it when the
// store starts, about 21 bytes a key (21 MB for the default), and does
// not grow. Beyond max_keys the key that would drain soonest gives way;
// keys holding concurrency slots are kept.
type Config struct {
	MaxKeys          int           `toml:"max_keys"`          // keys tracked at most
	Snapshot         string        `toml:"snapshot"`          // file the counters survive restarts in; empty: none
	SnapshotInterval conf.Duration `toml:"snapshot_interval"` // how often the snapshot is written while running
}

// DefaultMaxKeys tracks a million clients, senders and users at once.
const DefaultMaxKeys = 1_000_000

// maxMaxKeys keeps the per-shard tables within what a slice of 16-byte
// entries can address comfortably and within int32 counts.
const maxMaxKeys = 1 << 30

// Defaults fills what the file left out.
func (c *Config) Defaults() {
	if c.MaxKeys == 0 {
		c.MaxKeys = DefaultMaxKeys
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = conf.Duration(30 * time.Second)
	}
}

// Validate checks the memory store's keys.
func (c *Config) Validate() error {
	if c.MaxKeys < 1 || c.MaxKeys > maxMaxKeys {
		return conf.Errorf("max_keys", "%d is out of range (1 to %d)", c.MaxKeys, maxMaxKeys)
	}
	if c.SnapshotInterval.D() < time.Second {
		// Each write walks every shard and fsyncs; sub-second intervals
		// would spend the disk for nothing.
		return conf.Errorf("snapshot_interval", "%s is below 1s", c.SnapshotInterval.D())
	}
	return nil
}
