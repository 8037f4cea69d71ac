package limits

import (
	"fmt"

	"go.uber.org/zap"

	"sluice/conf"
	"sluice/limits/counter"
	"sluice/limits/memstore"
)

// StoreConfig is the [store] table: where counters live and what rules do
// when that place cannot answer. The memory store's keys sit in it directly.
type StoreConfig struct {
	Backend      string `toml:"backend"`        // memory (default) | redis
	OnStoreError string `toml:"on_store_error"` // default for rules: allow | tempfail | local
	memstore.Config
}

// Defaults fills what the file left out.
func (c *StoreConfig) Defaults() {
	if c.Backend == "" {
		c.Backend = "memory"
	}
	c.Config.Defaults()
}

// Validate checks the [store] table.
func (c *StoreConfig) Validate() error {
	switch c.Backend {
	case "memory":
	case "redis":
		return conf.Errorf("backend", "the redis backend is not built yet")
	default:
		return conf.Errorf("backend", "unknown backend %q (want memory or redis)", c.Backend)
	}
	if _, err := parseStoreErrorPolicy(c.OnStoreError); err != nil {
		return conf.Errorf("on_store_error", "%v", err)
	}
	return c.Config.Validate()
}

// OpenStore opens the configured store, and the local store that rules
// with on_store_error = "local" fall back to (nil for the memory backend,
// which cannot fail that way).
func OpenStore(c *StoreConfig, log *zap.Logger) (store, fallback counter.Store, err error) {
	switch c.Backend {
	case "memory":
		s, err := memstore.New(c.Config, log)
		if err != nil {
			return nil, nil, fmt.Errorf("open memory store: %w", err)
		}
		return s, nil, nil
	}
	return nil, nil, fmt.Errorf("store backend %q is not available", c.Backend)
}
