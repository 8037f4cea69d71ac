package config

import (
	"fmt"
	"reflect"

	"go.uber.org/zap"

	"sluice/conf"
	"sluice/limits"
	"sluice/limits/counter"
	"sluice/limits/memstore"
	"sluice/limits/redisstore"
)

// StoreConfig is the [store] table: where counters live and what rules do
// when that place cannot answer. The memory and Redis stores' keys sit in
// it directly; their names never clash.
type StoreConfig struct {
	Backend      string `toml:"backend" words:"memory redis"`                // default memory
	OnStoreError string `toml:"on_store_error" words:"allow tempfail local"` // the rules' default
	memstore.Config
	RedisConfig
}

// RedisConfig names the embedded Redis keys apart from the memory ones.
type RedisConfig = redisstore.Config

// Defaults fills what the file left out.
func (c *StoreConfig) Defaults() {
	if c.Backend == "" {
		c.Backend = "memory"
	}
	c.Config.Defaults()
	if c.Backend == "redis" {
		c.RedisConfig.Defaults()
	}
}

// Validate checks the [store] table.
func (c *StoreConfig) Validate() error {
	switch c.Backend {
	case "memory":
		if k := c.RedisConfig.Unused(); k != "" {
			return conf.Errorf(k, "is a Redis setting: add backend = \"redis\" to use Redis")
		}
	case "redis":
		if c.Snapshot != "" {
			return conf.Errorf("snapshot", "is for backend = \"memory\": Redis keeps the counters itself")
		}
		if err := c.RedisConfig.Validate(); err != nil {
			return err
		}
	default:
		return conf.Errorf("backend", "unknown backend %q (want memory or redis)", c.Backend)
	}
	if err := limits.CheckOnStoreError(c.OnStoreError); err != nil {
		return conf.Errorf("on_store_error", "%v", err)
	}
	return c.Config.Validate()
}

// Equal reports whether two [store] tables say the same thing.
func (c *StoreConfig) Equal(o *StoreConfig) bool { return reflect.DeepEqual(c, o) }

// OpenStores opens the configured store, and the local store that rules
// with on_store_error = "local" fall back to (nil for the memory backend,
// which cannot fail that way). The Redis store opens even when Redis is
// down: it says so in the log, and rules follow on_store_error until
// Redis answers.
func OpenStores(c *StoreConfig, log *zap.Logger) (store, fallback counter.Store, err error) {
	if log == nil {
		log = zap.NewNop()
	}
	switch c.Backend {
	case "memory":
		s, err := memstore.New(c.Config, log)
		if err != nil {
			return nil, nil, fmt.Errorf("open memory store: %w", err)
		}
		return s, nil, nil
	case "redis":
		// The fallback counts only while Redis is away: no snapshot, and
		// the same bound on keys as a memory store.
		local, err := memstore.New(memstore.Config{MaxKeys: c.MaxKeys}, log.Named("local"))
		if err != nil {
			return nil, nil, fmt.Errorf("open local fallback store: %w", err)
		}
		s, err := redisstore.Open(c.RedisConfig, log.Named("redis"))
		if err != nil {
			local.Close()
			return nil, nil, fmt.Errorf("open redis store: %w", err)
		}
		return s, local, nil
	}
	return nil, nil, fmt.Errorf("store backend %q is not available", c.Backend)
}
