package auth

import "sluice/auth/resolver"

type resolverCfg = resolver.Config

// resolverConfig points the resolver at a test server, with a rate cap
// no test reaches.
func resolverConfig(addr string, edit ...func(*resolver.Config)) resolver.Config {
	c := resolver.Config{Servers: []string{addr}, Rate: 100000, Burst: 10000}
	for _, e := range edit {
		e(&c)
	}
	return c
}
