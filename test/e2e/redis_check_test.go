package e2e

// `sluice check` validates the Redis settings of [store] without touching
// the network: each bad setting is named with its file and line.

import (
	"testing"

	"sluice/test/testenv"
)

func TestRedisCheckConfig(t *testing.T) {
	testenv.Require(t)
	dir := t.TempDir()
	// Nothing listens on port 1: check must not connect.
	good := `listen = "inet:127.0.0.1:8891"
mode = "enforce"

[store]
backend = "redis"
addrs = ["127.0.0.1:1"]
prefix = "sluice:"
timeout = "250ms"
lease_time = "60s"
on_store_error = "local"

[[limit]]
name = "msgs-per-sender"
count = "messages"
per = "sender"
rate = "10/1h"
on_store_error = "tempfail"
`
	for _, tc := range []configCase{
		{name: "good"},
		{name: "sentinel", line: 6, config: `addrs = ["10.0.0.1:26379", "10.0.0.2:26379"]` + "\nmaster_name = \"mymaster\""},
		{name: "cluster", line: 6, config: `addrs = ["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"]` + "\ncluster = true"},
		{name: "tls", line: 7, config: `tls = true` + "\ntls_server_name = \"redis.example.net\""},
		{name: "addr-no-port", line: 6, config: `addrs = ["redis.example.net"]`, want: "want host:port"},
		{name: "several-addrs", line: 6, config: `addrs = ["a:1", "b:2"]`, want: "cluster = true"},
		{name: "cluster-and-sentinel", line: 7, config: `master_name = "m"` + "\ncluster = true", want: "exclude"},
		{name: "brace-prefix", line: 7, config: `prefix = "{x}"`, want: "hash tags"},
		{name: "tls-file-without-tls", line: 7, config: `tls_ca_file = "/etc/ssl/certs/ca-certificates.crt"`, want: "tls = true"},
		{name: "missing-ca", line: 7, config: `tls = true` + "\ntls_ca_file = \"/nonexistent/ca.pem\"", want: "no such file", at: 8},
		{name: "short-lease", line: 9, config: `lease_time = "500ms"`, want: "lease_time"},
		{name: "bad-timeout", line: 8, config: `timeout = "soon"`, want: "timeout"},
		{name: "bad-policy", line: 10, config: `on_store_error = "pray"`, want: "allow, tempfail or local"},
		{name: "bad-rule-policy", line: 17, config: `on_store_error = "pray"`, want: "on_store_error"},
		{name: "unknown-key", line: 7, config: `prefx = "a"`, want: "prefx"},
		{name: "snapshot-with-redis", line: 7, config: `snapshot = "/var/lib/sluice/counters.snap"`, want: "memory"},
		{name: "redis-key-with-memory", line: 5, config: `backend = "memory"`, want: "backend = \"redis\"", at: 6},
		{name: "window-over-52-days", line: 16, config: `rate = ["10/1h", "10000/60d"]`, want: "52 days"},
		{name: "unknown-backend", line: 5, config: `backend = "memcached"`, want: "unknown backend"},
	} {
		t.Run(tc.name, func(t *testing.T) { runCheck(t, dir, good, tc) })
	}
}
