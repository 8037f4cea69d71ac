package redisstore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sluice/conf"
)

func TestConfigValidate(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("s3cret\n"), 0o600)
	notPEM := filepath.Join(dir, "ca.pem")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o644)
	tests := []struct {
		name string
		edit func(*Config)
		key  string // "" when valid
		msg  string
	}{
		{"defaults", func(c *Config) {}, "", ""},
		{"sentinel", func(c *Config) {
			c.Addrs, c.MasterName, c.SentinelPassword = []string{"10.0.0.1:26379", "10.0.0.2:26379"}, "mymaster", "x"
		}, "", ""},
		{"cluster", func(c *Config) { c.Addrs, c.Cluster = []string{"a:7000", "b:7001", "c:7002"}, true }, "", ""},
		{"password file", func(c *Config) { c.PasswordFile = pw }, "", ""},
		{"ipv6", func(c *Config) { c.Addrs = []string{"[::1]:6379"} }, "", ""},
		{"no port", func(c *Config) { c.Addrs = []string{"localhost"} }, "addrs.0", "want host:port"},
		{"bad port", func(c *Config) { c.Addrs = []string{"h:0", "h:99999"}; c.Cluster = true }, "addrs.0", "bad port"},
		{"no host", func(c *Config) { c.Addrs = []string{":6379"} }, "addrs.0", "no host"},
		{"several without topology", func(c *Config) { c.Addrs = []string{"a:1", "b:2"} }, "addrs", "cluster = true"},
		{"cluster and sentinel", func(c *Config) { c.Cluster, c.MasterName = true, "m" }, "master_name", "exclude"},
		{"cluster db", func(c *Config) { c.Cluster, c.DB = true, 3 }, "db", "database 0"},
		{"negative db", func(c *Config) { c.DB = -1 }, "db", "out of range"},
		{"sentinel password alone", func(c *Config) { c.SentinelPassword = "x" }, "sentinel_password", "master_name"},
		{"both passwords", func(c *Config) { c.Password, c.PasswordFile = "a", pw }, "password_file", "not both"},
		{"missing password file", func(c *Config) { c.PasswordFile = filepath.Join(dir, "nope") }, "password_file", "no such file"},
		{"brace in prefix", func(c *Config) { c.Prefix = "a{b}:" }, "prefix", "hash tags"},
		{"tls file without tls", func(c *Config) { c.TLSCAFile = notPEM }, "tls_ca_file", "tls = true"},
		{"bad CA", func(c *Config) { c.TLS, c.TLSCAFile = true, notPEM }, "tls_ca_file", "no PEM"},
		{"missing CA", func(c *Config) { c.TLS, c.TLSCAFile = true, filepath.Join(dir, "nope") }, "tls_ca_file", "no such file"},
		{"cert without key", func(c *Config) { c.TLS, c.TLSCertFile = true, notPEM }, "tls_cert_file", "go together"},
		{"zero-ish timeout", func(c *Config) { c.Timeout = conf.Duration(time.Microsecond) }, "timeout", "out of range"},
		{"lease below 3 timeouts", func(c *Config) { c.Timeout, c.LeaseTime = conf.Duration(time.Second), conf.Duration(2*time.Second) }, "lease_time", "3 times"},
		{"backoff max below min", func(c *Config) {
			c.RetryBackoff, c.RetryBackoffMax = conf.Duration(time.Second), conf.Duration(time.Millisecond*500)
		}, "retry_backoff_max", "between"},
		{"pool", func(c *Config) { c.PoolSize = -1 }, "pool_size", "out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Config{}
			tt.edit(&c)
			c.Defaults()
			err := c.Validate()
			if tt.key == "" {
				if err != nil {
					t.Fatalf("valid config refused: %v", err)
				}
				if _, err := c.options(); err != nil {
					t.Fatalf("options: %v", err)
				}
				return
			}
			var ce *conf.Error
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want a conf.Error at %s", err, tt.key)
			}
			if got := strings.Join(ce.Path, "."); got != tt.key || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("got %q at %s, want %q at %s", err, got, tt.msg, tt.key)
			}
		})
	}
}

func TestConfigOptions(t *testing.T) {
	c := Config{Addrs: []string{"redis.example.net:6380"}, TLS: true, Username: "sluice", Password: "pw", DB: 2}
	c.Defaults()
	o, err := c.options()
	if err != nil {
		t.Fatal(err)
	}
	if o.TLSConfig == nil || o.TLSConfig.ServerName != "redis.example.net" || o.Username != "sluice" || o.DB != 2 || o.MaxRetries != -1 {
		t.Errorf("options: %+v", o)
	}
	if o.ReadTimeout != DefaultTimeout || o.DialTimeout != DefaultDialTimeout {
		t.Errorf("timeouts: read %v dial %v", o.ReadTimeout, o.DialTimeout)
	}
	var u Config
	if u.Unused() != "" {
		t.Errorf("empty config uses %q", u.Unused())
	}
	u.Cluster = true
	if u.Unused() != "cluster" {
		t.Errorf("Unused = %q", u.Unused())
	}
}

func TestBreakerBackoff(t *testing.T) {
	now := time.Unix(0, 0)
	b := newBreaker(time.Second, 4*time.Second)
	b.now = func() time.Time { return now }
	if !b.allow() {
		t.Fatal("a closed breaker refuses")
	}
	if opened, _ := b.done(false); !opened || b.allow() {
		t.Fatal("not open after a failure")
	}
	for _, pause := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
		now = now.Add(pause - time.Millisecond)
		if b.allow() {
			t.Fatalf("probe allowed before the pause of %v", pause)
		}
		now = now.Add(time.Millisecond)
		if !b.allow() {
			t.Fatalf("no probe after the pause of %v", pause)
		}
		if b.allow() {
			t.Fatal("two probes at once")
		}
		b.done(false)
	}
	now = now.Add(4 * time.Second)
	if !b.allow() {
		t.Fatal("no probe")
	}
	if _, closed := b.done(true); !closed || !b.allow() || b.isOpen() {
		t.Fatal("a good probe did not close the breaker")
	}
}
