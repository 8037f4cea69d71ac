package main

import (
	"runtime"

	"sluice/admin"
	"sluice/config"
	"sluice/metrics"
	"sluice/milter"
)

// fdReserve is how many file descriptors sluice keeps for everything but
// its milter connections: milter.BaseReserve, the metrics and admin
// listeners with the connections they serve at most, and the Redis pools
// (go-redis's default is 10 connections per CPU, one pool per address
// given, one more connection each for Sentinel or Cluster bookkeeping).
func fdReserve(c *config.Config) int {
	n := milter.BaseReserve
	if c.Metrics.Enabled() {
		n += 1 + metrics.MaxConnections
	}
	if c.Admin.Socket != "" {
		n += 1 + admin.MaxConnections
	}
	if c.Store.Backend == "redis" {
		pool := c.Store.PoolSize
		if pool == 0 {
			pool = 10 * runtime.GOMAXPROCS(0)
		}
		n += (pool + 1) * len(c.Store.Addrs)
	}
	return n
}

// connectionBudget is the max_connections sluice runs with, and the file
// descriptor limit it was derived from or checked against: the config's
// value, or ConnectionsFor the limit and the reserve. tooMany is set when
// a configured value leaves less than the reserve.
func connectionBudget(c *config.Config) (n, limit int, tooMany bool, err error) {
	limit, err = milter.FDLimit()
	if err != nil {
		return 0, 0, false, err
	}
	reserve := fdReserve(c)
	if c.MaxConnections > 0 {
		return c.MaxConnections, limit, c.MaxConnections > limit-reserve, nil
	}
	return milter.ConnectionsFor(limit, reserve), limit, false, nil
}
