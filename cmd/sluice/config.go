package main

import (
	_ "embed"

	"sluice/config"
)

//go:embed default.toml
var defaultConfig []byte

// DefaultConfigName stands for the built-in config in messages.
const DefaultConfigName = "(built-in config)"

// loadConfig reads the config file, or the built-in config when path is
// empty; every error names the file and line.
func loadConfig(path string) (*config.Config, error) {
	if path == "" {
		return config.Parse(DefaultConfigName, defaultConfig)
	}
	return config.Load(path)
}

func configName(path string) string {
	if path == "" {
		return DefaultConfigName
	}
	return path
}
