// Package config loads sluice's config file: strict decoding with
// FILE:LINE errors, defaults, checks across sections, and the engine.
//
// Before anything is decoded, the file's shape is checked against the
// types it is decoded into (shape.go): each value must be of the kind its
// key takes — a word where a mode belongs, a list where a list does —
// and a string key with a `words:"a b c"` tag takes only those words.
//
// Each section belongs to the package that uses it, which fills its
// defaults and validates it (milter, engine, policy, limits, auth, lists,
// metrics, admin); this package puts them together, checks what only the
// whole file can tell (a rule's delay against max_delay, the Redis
// store's longest window against the rules), opens the counter stores
// and builds the engine.
package config

import (
	"fmt"

	"sluice/admin"
	"sluice/alert"
	"sluice/auth"
	"sluice/auth/dkim"
	"sluice/auth/dmarc"
	"sluice/conf"
	"sluice/engine"
	"sluice/limits"
	"sluice/limits/redisstore"
	"sluice/lists"
	"sluice/metrics"
	"sluice/milter"
	"sluice/policy"
)

// Config is the whole file. The embedded sections hold top-level keys.
type Config struct {
	MilterConfig
	EngineConfig
	PolicyConfig
	LimitsConfig
	AuthConfig
	DKIM            dkim.Config    `toml:"dkim"`
	DMARC           dmarc.Config   `toml:"dmarc"`
	Store           StoreConfig    `toml:"store"`
	Lists           lists.Config   `toml:"lists"`
	Log             LogConfig      `toml:"log"`
	ShutdownTimeout conf.Duration  `toml:"shutdown_timeout"`
	Metrics         metrics.Config `toml:"metrics"`
	Admin           admin.Config   `toml:"admin"`
	Alerts          []alert.Config `toml:"alert"`

	name string // the file, for errors
	data []byte // its text, to find the line of a key
}

// The sections that hold top-level keys are embedded; these names keep
// their fields apart.
type (
	MilterConfig = milter.Config
	EngineConfig = engine.Config
	PolicyConfig = policy.Config
	LimitsConfig = limits.Config
	AuthConfig   = auth.Config
)

// LogConfig is the [log] table.
type LogConfig struct {
	Level  string `toml:"level" words:"debug info warn error"`
	Format string `toml:"format" words:"json console"`
}

// Load reads, decodes, defaults and validates a config file; every error
// names the file and line.
func Load(path string) (*Config, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse is Load for a config in memory; name stands for it in errors.
func Parse(name string, data []byte) (*Config, error) {
	c := &Config{name: name, data: data}
	if err := decodeFile(name, data, c); err != nil {
		return nil, err
	}
	c.defaults()
	if err := c.validate(); err != nil {
		return nil, c.Locate(err)
	}
	return c, nil
}

// Name is the file the config came from.
func (c *Config) Name() string { return c.name }

func (c *Config) defaults() {
	c.MilterConfig.Defaults()
	c.EngineConfig.Defaults()
	c.PolicyConfig.Defaults()
	c.LimitsConfig.Defaults()
	c.AuthConfig.Defaults()
	c.DKIM.Defaults()
	c.DMARC.Defaults()
	c.Store.Defaults()
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "json"
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = conf.Duration(30e9)
	}
	c.Metrics.Defaults()
	c.Admin.Defaults()
	for i := range c.Alerts {
		c.Alerts[i].Defaults()
	}
}

func (c *Config) validate() error {
	if err := c.MilterConfig.Validate(); err != nil {
		return err
	}
	if err := c.EngineConfig.Validate(); err != nil {
		return err
	}
	if err := c.PolicyConfig.Validate(); err != nil {
		return err
	}
	if err := c.Lists.Validate(); err != nil {
		return conf.In(err, "lists")
	}
	names := make(map[string]bool)
	for n := range c.Lists {
		names[n] = true
	}
	if err := c.LimitsConfig.Validate(names); err != nil {
		return err
	}
	if c.Store.Backend == "redis" {
		// Lua in Redis computes exactly up to 2^52 nanoseconds of a
		// bucket, about 52 days.
		if err := c.LimitsConfig.FitSpan(names, redisstore.MaxSpan, "the Redis store counts windows of up to 52 days"); err != nil {
			return err
		}
	}
	if err := c.Store.Validate(); err != nil {
		return conf.In(err, "store")
	}
	if err := c.AuthConfig.Validate(); err != nil {
		return err
	}
	if err := c.validateMessageChecks(); err != nil {
		return err
	}
	rules := make(map[string]bool)
	for _, r := range c.Rules {
		rules[r.Name] = true
	}
	for i := range c.Alerts {
		if err := c.Alerts[i].Validate(rules); err != nil {
			return conf.In(err, "alert", conf.Index(i))
		}
	}
	for i := range c.Rules {
		if err := c.PolicyConfig.CheckDelay(c.Rules[i].Delay.D()); err != nil {
			return conf.In(conf.Errorf("delay", "%v", err), "limit", conf.Index(i))
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return conf.In(conf.Errorf("level", "unknown level %q (want debug, info, warn or error)", c.Log.Level), "log")
	}
	if err := c.Metrics.Validate(); err != nil {
		return conf.In(err, "metrics")
	}
	if err := c.Admin.Validate(); err != nil {
		return conf.In(err, "admin")
	}
	if c.ShutdownTimeout < 0 {
		return conf.Errorf("shutdown_timeout", "must not be negative")
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		return conf.In(conf.Errorf("format", "unknown format %q (want json or console)", c.Log.Format), "log")
	}
	return nil
}

// Warnings are what the file may say but an admin should hear about,
// each with its place like an error: a metrics listener reachable from
// other hosts. (The admin endpoint is a unix socket: it never listens on
// the network.)
func (c *Config) Warnings() []error {
	var ws []error
	if err := c.Metrics.Exposure(); err != nil {
		ws = append(ws, c.Locate(conf.In(err, "metrics")))
	}
	return ws
}

func (c *Config) String() string {
	return fmt.Sprintf("listen=%s mode=%s rules=%d", c.Listen, c.Mode, len(c.Rules))
}

// validateMessageChecks checks [dkim] and [dmarc], and what they need of
// each other and of the rules.
func (c *Config) validateMessageChecks() error {
	if err := c.DKIM.Validate(); err != nil {
		return conf.In(err, "dkim")
	}
	if err := c.DMARC.Validate(); err != nil {
		return conf.In(err, "dmarc")
	}
	if c.DMARC.Enabled && (!c.SPF.Enabled || !c.DKIM.Enabled) {
		return conf.In(conf.Errorf("enabled", "DMARC passes on an aligned SPF or DKIM pass: turn on [spf] and [dkim] too (enabled = true)"), "dmarc")
	}
	for i := range c.Rules {
		d, m := c.Rules[i].Verified()
		switch {
		case d && !c.DKIM.Enabled:
			return conf.In(conf.Errorf("per", "dkim_domain counts what DKIM verified: turn on [dkim] (enabled = true)"), "limit", conf.Index(i))
		case m && !c.DMARC.Enabled:
			return conf.In(conf.Errorf("per", "from_domain and match.dmarc read DMARC's result: turn on [dmarc] (enabled = true)"), "limit", conf.Index(i))
		}
	}
	return nil
}
