package main

import (
	_ "embed"
	"fmt"

	"sluice/admin"
	"sluice/auth"
	"sluice/conf"
	"sluice/limits"
	"sluice/lists"
	"sluice/metrics"
	"sluice/milter"
	"sluice/policy"
)

// Config is the whole file. Each part belongs to the package that uses it;
// the embedded ones hold top-level keys.
type Config struct {
	MilterConfig
	PolicyConfig
	LimitsConfig
	AuthConfig
	Lists           lists.Config   `toml:"lists"`
	Log             LogConfig      `toml:"log"`
	ShutdownTimeout conf.Duration  `toml:"shutdown_timeout"`
	Metrics         metrics.Config `toml:"metrics"`
	Admin           admin.Config   `toml:"admin"`
}

// LogConfig is the [log] table.
type LogConfig struct {
	Level  string `toml:"level"`  // debug | info | warn | error
	Format string `toml:"format"` // json | console
}

// The sections that hold top-level keys are embedded; these names keep
// their fields apart.
type (
	MilterConfig = milter.Config
	PolicyConfig = policy.Config
	LimitsConfig = limits.Config
	AuthConfig   = auth.Config
)

//go:embed default.toml
var defaultConfig []byte

// DefaultConfigName stands for the built-in config in messages.
const DefaultConfigName = "(built-in config)"

// loadConfig reads, decodes, defaults and validates a config file; every
// error names the file and line.
func loadConfig(path string) (*Config, error) {
	data := defaultConfig
	name := DefaultConfigName
	if path != "" {
		var err error
		if data, err = readFile(path); err != nil {
			return nil, err
		}
		name = path
	}
	return parseConfig(name, data)
}

// configData is the text of a config for error messages: the file as it
// is now, or the built-in config.
func configData(path string) []byte {
	if path == "" {
		return defaultConfig
	}
	data, _ := readFile(path)
	return data
}

func parseConfig(name string, data []byte) (*Config, error) {
	var c Config
	if err := decodeFile(name, data, &c); err != nil {
		return nil, err
	}
	c.defaults()
	if err := c.validate(); err != nil {
		return nil, locate(name, data, err)
	}
	return &c, nil
}

func (c *Config) defaults() {
	c.MilterConfig.Defaults()
	c.PolicyConfig.Defaults()
	c.LimitsConfig.Defaults()
	c.AuthConfig.Defaults()
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
}

func (c *Config) validate() error {
	if err := c.MilterConfig.Validate(); err != nil {
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
	if err := c.AuthConfig.Validate(); err != nil {
		return err
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

func (c *Config) String() string {
	return fmt.Sprintf("listen=%s mode=%s rules=%d", c.Listen, c.Mode, len(c.Rules))
}
