package redisstore

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"sluice/conf"
)

// Config holds the Redis store's keys of the [store] table. They sit next
// to the memory store's keys, so none may share a name with them.
type Config struct {
	Addrs            []string      `toml:"addrs"`             // host:port of the server, the Sentinels or some Cluster nodes
	Username         string        `toml:"username"`          // ACL user; empty: default user
	Password         string        `toml:"password"`          // or password_file
	PasswordFile     string        `toml:"password_file"`     // file holding the password (first line)
	DB               int           `toml:"db"`                // database number; single server and Sentinel only
	MasterName       string        `toml:"master_name"`       // Sentinel: the monitored master's name
	SentinelPassword string        `toml:"sentinel_password"` // Sentinel's own password, if it has one
	Cluster          bool          `toml:"cluster"`           // addrs are Redis Cluster nodes
	Prefix           string        `toml:"prefix"`            // put before every key; default "sluice:"
	TLS              bool          `toml:"tls"`               // connect with TLS
	TLSCAFile        string        `toml:"tls_ca_file"`       // CA bundle that signs the server's certificate; default: system roots
	TLSServerName    string        `toml:"tls_server_name"`   // name to verify; default: the host of each address
	TLSCertFile      string        `toml:"tls_cert_file"`     // client certificate, for servers that ask for one
	TLSKeyFile       string        `toml:"tls_key_file"`      // its key
	Timeout          conf.Duration `toml:"timeout"`           // one call, round trip included
	DialTimeout      conf.Duration `toml:"dial_timeout"`      // opening a connection
	LeaseTime        conf.Duration `toml:"lease_time"`        // a concurrency slot of a host that stopped refreshing it expires after this
	RetryBackoff     conf.Duration `toml:"retry_backoff"`     // first pause before Redis is tried again after a failure
	RetryBackoffMax  conf.Duration `toml:"retry_backoff_max"` // the pause doubles up to this
	PoolSize         int           `toml:"pool_size"`         // connections per server; 0: go-redis's default (10 per CPU)
}

// Defaults for the keys left out. The timeout is short on purpose: an SMTP
// stage waits for it, and a Redis on the same network answers in well
// under a millisecond.
const (
	DefaultAddr            = "127.0.0.1:6379"
	DefaultPrefix          = "sluice:"
	DefaultTimeout         = 250 * time.Millisecond
	DefaultDialTimeout     = 500 * time.Millisecond
	DefaultLeaseTime       = 60 * time.Second
	DefaultRetryBackoff    = 500 * time.Millisecond
	DefaultRetryBackoffMax = 30 * time.Second
)

// Defaults fills what the file left out.
func (c *Config) Defaults() {
	if len(c.Addrs) == 0 {
		c.Addrs = []string{DefaultAddr}
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	setDuration(&c.Timeout, DefaultTimeout)
	setDuration(&c.DialTimeout, DefaultDialTimeout)
	setDuration(&c.LeaseTime, DefaultLeaseTime)
	setDuration(&c.RetryBackoff, DefaultRetryBackoff)
	setDuration(&c.RetryBackoffMax, DefaultRetryBackoffMax)
}

func setDuration(d *conf.Duration, def time.Duration) {
	if *d == 0 {
		*d = conf.Duration(def)
	}
}

// Validate checks the Redis keys without touching the network; it reads
// the TLS and password files, so that a wrong path is found by `sluice
// check` rather than at the first connection.
func (c *Config) Validate() error {
	for i, a := range c.Addrs {
		if err := checkAddr(a); err != nil {
			return conf.In(conf.Errorf(conf.Index(i), "%v", err), "addrs")
		}
	}
	switch {
	case c.Cluster && c.MasterName != "":
		return conf.Errorf("master_name", "Sentinel (master_name) and cluster = true exclude each other")
	case c.Cluster && c.DB != 0:
		return conf.Errorf("db", "Redis Cluster has only database 0")
	case !c.Cluster && c.MasterName == "" && len(c.Addrs) > 1:
		return conf.Errorf("addrs", "%d addresses: set cluster = true for Cluster nodes or master_name for Sentinels; a single server takes one address", len(c.Addrs))
	case c.SentinelPassword != "" && c.MasterName == "":
		return conf.Errorf("sentinel_password", "is for Sentinel (set master_name)")
	}
	if c.DB < 0 || c.DB > 1<<20 {
		return conf.Errorf("db", "%d is out of range", c.DB)
	}
	if c.Password != "" && c.PasswordFile != "" {
		return conf.Errorf("password_file", "give password or password_file, not both")
	}
	if c.PasswordFile != "" {
		if _, err := c.password(); err != nil {
			return conf.Errorf("password_file", "%v", err)
		}
	}
	if strings.ContainsAny(c.Prefix, "{}") {
		// A brace in the prefix would become the Cluster hash tag of every
		// key and put them all on one slot.
		return conf.Errorf("prefix", "%q: braces are reserved for Cluster hash tags", c.Prefix)
	}
	if len(c.Prefix) > 64 {
		return conf.Errorf("prefix", "longer than 64 bytes")
	}
	if !c.TLS {
		for key, v := range map[string]string{"tls_ca_file": c.TLSCAFile, "tls_server_name": c.TLSServerName, "tls_cert_file": c.TLSCertFile, "tls_key_file": c.TLSKeyFile} {
			if v != "" {
				return conf.Errorf(key, "is set but tls is not: add tls = true")
			}
		}
	} else if _, err := c.tlsConfig(); err != nil {
		return err
	}
	if err := checkDuration("timeout", c.Timeout.D(), time.Millisecond, 10*time.Second); err != nil {
		return err
	}
	if err := checkDuration("dial_timeout", c.DialTimeout.D(), time.Millisecond, 30*time.Second); err != nil {
		return err
	}
	if err := checkDuration("lease_time", c.LeaseTime.D(), time.Second, 24*time.Hour); err != nil {
		return err
	}
	if c.Timeout.D()*3 > c.LeaseTime.D() {
		// Leases are refreshed every lease_time/3; a refresh that can take
		// longer than that lets live slots expire.
		return conf.Errorf("lease_time", "%s must be at least 3 times timeout (%s)", c.LeaseTime.D(), c.Timeout.D())
	}
	if err := checkDuration("retry_backoff", c.RetryBackoff.D(), 10*time.Millisecond, time.Hour); err != nil {
		return err
	}
	if c.RetryBackoffMax.D() < c.RetryBackoff.D() || c.RetryBackoffMax.D() > time.Hour {
		return conf.Errorf("retry_backoff_max", "%s must lie between retry_backoff (%s) and 1h", c.RetryBackoffMax.D(), c.RetryBackoff.D())
	}
	if c.PoolSize < 0 || c.PoolSize > 10000 {
		return conf.Errorf("pool_size", "%d is out of range (0 to 10000)", c.PoolSize)
	}
	return nil
}

// Unused names the first Redis key that is set although the backend is
// not Redis ("" when none is), so that a forgotten backend = "redis" is
// an error rather than a silent memory store.
func (c *Config) Unused() string {
	switch {
	case len(c.Addrs) > 0:
		return "addrs"
	case c.Username != "" || c.Password != "" || c.PasswordFile != "":
		return "password"
	case c.MasterName != "":
		return "master_name"
	case c.Cluster:
		return "cluster"
	case c.Prefix != "":
		return "prefix"
	case c.TLS:
		return "tls"
	case c.LeaseTime != 0:
		return "lease_time"
	}
	return ""
}

// Equal reports whether two configs say the same thing.
func (c *Config) Equal(o *Config) bool { return reflect.DeepEqual(c, o) }

func checkAddr(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("%q: want host:port", a)
	}
	if host == "" {
		return fmt.Errorf("%q: no host", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: bad port", a)
	}
	return nil
}

func checkDuration(key string, d, lo, hi time.Duration) error {
	if d < lo || d > hi {
		return conf.Errorf(key, "%s is out of range (%s to %s)", d, lo, hi)
	}
	return nil
}

func (c *Config) password() (string, error) {
	if c.PasswordFile == "" {
		return c.Password, nil
	}
	b, err := os.ReadFile(c.PasswordFile)
	if err != nil {
		return "", err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	line = strings.TrimRight(line, "\r")
	if line == "" {
		return "", fmt.Errorf("%s: empty", c.PasswordFile)
	}
	return line, nil
}

// tlsConfig builds the TLS settings; nil when TLS is off. Errors name the key.
func (c *Config) tlsConfig() (*tls.Config, error) {
	if !c.TLS {
		return nil, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.TLSServerName}
	if c.TLSCAFile != "" {
		pem, err := os.ReadFile(c.TLSCAFile)
		if err != nil {
			return nil, conf.Errorf("tls_ca_file", "%v", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return nil, conf.Errorf("tls_ca_file", "%s holds no PEM certificate", c.TLSCAFile)
		}
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return nil, conf.Errorf("tls_cert_file", "tls_cert_file and tls_key_file go together")
	}
	if c.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile)
		if err != nil {
			return nil, conf.Errorf("tls_cert_file", "%v", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}

// options builds go-redis's client options: one UniversalClient for the
// three topologies.
func (c *Config) options() (*redis.UniversalOptions, error) {
	pw, err := c.password()
	if err != nil {
		return nil, fmt.Errorf("redis password_file: %w", err)
	}
	t, err := c.tlsConfig()
	if err != nil {
		return nil, err
	}
	if t != nil && t.ServerName == "" && c.MasterName == "" && !c.Cluster {
		t.ServerName, _, _ = net.SplitHostPort(c.Addrs[0])
	}
	if c.Timeout == 0 {
		return nil, errors.New("redis store: config has no defaults")
	}
	return &redis.UniversalOptions{
		Addrs:            c.Addrs,
		ClientName:       "sluice",
		DB:               c.DB,
		Username:         c.Username,
		Password:         pw,
		MasterName:       c.MasterName,
		SentinelPassword: c.SentinelPassword,
		IsClusterMode:    c.Cluster,
		TLSConfig:        t,
		// A script that timed out may have run: sending it again could
		// count an event twice. The engine's failure policy answers instead.
		MaxRetries:            -1,
		DialTimeout:           c.DialTimeout.D(),
		DialerRetries:         1,
		ReadTimeout:           c.Timeout.D(),
		WriteTimeout:          c.Timeout.D(),
		ContextTimeoutEnabled: true,
		PoolSize:              c.PoolSize,
		PoolTimeout:           c.Timeout.D(),
		DisableIdentity:       true,
	}, nil
}
