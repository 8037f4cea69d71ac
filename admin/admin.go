// Package admin is sluice's admin endpoint: an HTTP API on a unix socket
// that shows, resets and exempts counters, and the client that
// `sluice counters` talks to it with.
package admin

import (
	"context"
	"path/filepath"
	"time"

	"sluice/conf"
	"sluice/limits"
)

// Config is the [admin] table. The endpoint is off when socket is empty.
type Config struct {
	Socket string `toml:"socket"` // unix socket path, mode 0600
}

// DefaultSocket is where the example config and `sluice counters` look.
const DefaultSocket = "/run/sluice/admin.sock"

// Defaults fills what the file left out: nothing, the endpoint stays off.
func (c *Config) Defaults() {}

// Validate checks the [admin] keys.
func (c *Config) Validate() error {
	if c.Socket != "" && !filepath.IsAbs(c.Socket) {
		return conf.Errorf("socket", "%q: the socket path must be absolute (e.g. %q)", c.Socket, DefaultSocket)
	}
	return nil
}

// Counters is what the endpoint asks: the limits engine in force.
type Counters interface {
	Top(ctx context.Context, rule string, n int) ([]limits.Counter, error)
	Show(ctx context.Context, key, rule string) ([]limits.Counter, error)
	Reset(ctx context.Context, key, rule string) ([]limits.Counter, error)
	Allow(ctx context.Context, key string, until time.Time) ([]string, error)
	Exemptions(ctx context.Context) (map[string]time.Time, error)
	Limit(ctx context.Context, rule, key, limit string, d time.Duration, by string) (limits.RuntimeLimit, error)
	Unlimit(ctx context.Context, rule, key string) (limits.RuntimeLimit, bool, error)
	Limits(ctx context.Context, rule string) ([]limits.RuntimeLimit, []limits.OverrideTable, error)
	Restrictions(ctx context.Context, rule string) ([]limits.Restricted, error)
	Release(ctx context.Context, key, rule string) ([]limits.Restricted, error)
}

// Counter is one counter as the API shows it.
type Counter struct {
	Rule       string  `json:"rule"`
	Limit      string  `json:"limit"` // "10/1h", "20 at once"; empty for a rule no longer in the config
	Key        string  `json:"key"`   // dimension key
	StoreKey   string  `json:"store_key"`
	Concurrent bool    `json:"concurrent,omitempty"`
	Count      int64   `json:"count"`
	Max        int64   `json:"max"`
	RetryAfter float64 `json:"retry_after_seconds"`
	InConfig   bool    `json:"in_config"`
	Distinct   bool    `json:"distinct,omitempty"` // different values within a window
	From       string  `json:"from,omitempty"`     // where the limit comes from: rule, table FILE:LINE, runtime
}

// Retry is RetryAfter as a duration.
func (c Counter) Retry() time.Duration {
	return time.Duration(c.RetryAfter * float64(time.Second))
}

func fromLimits(cs []limits.Counter) []Counter {
	out := make([]Counter, len(cs))
	for i, c := range cs {
		out[i] = Counter{
			Rule: c.Rule, Limit: c.Limit, Key: c.Key, StoreKey: c.StoreKey, Concurrent: c.Concurrent,
			Count: c.Count, Max: c.Max, RetryAfter: c.RetryAfter.Seconds(), InConfig: c.Known,
			Distinct: c.Distinct, From: c.From,
		}
	}
	return out
}

// Exemption is one key exempted from every rule until a time.
type Exemption struct {
	Key   string    `json:"key"`
	Until time.Time `json:"until"`
}

// response is every answer's body; Error is set on failure.
type response struct {
	Counters     []Counter       `json:"counters,omitempty"`
	Exemptions   []Exemption     `json:"exemptions,omitempty"`
	Limits       []RuntimeLimit  `json:"limits,omitempty"`
	Tables       []OverrideTable `json:"tables,omitempty"`
	Restrictions []Restriction   `json:"restrictions,omitempty"`
	Error        string          `json:"error,omitempty"`
}
