package redisstore

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"sluice/conf"
	"sluice/limits/counter"
	"sluice/limits/counter/countertest"
	"sluice/limits/redisstore/redistest"
)

// writeCert writes a certificate for names (signed by parent, or
// self-signed when parent is nil) and its key as PEM files in dir.
func writeCert(t *testing.T, dir, name string, ca bool, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, dnsNames ...string) (*x509.Certificate, *ecdsa.PrivateKey, string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     dnsNames,
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         ca, BasicConstraintsValid: true,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return cert, key, certFile, keyFile
}

// TLS with our own CA and server name, and an ACL user: the store counts;
// a wrong server name or password is refused.
func TestTLSAndACL(t *testing.T) {
	dir := t.TempDir()
	ca, caKey, caFile, _ := writeCert(t, dir, "ca", true, nil, nil)
	_, _, certFile, keyFile := writeCert(t, dir, "server", false, ca, caKey, "redis.sluice.test")
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	srv := redistest.StartTLS(t, certFile, keyFile, &tls.Config{RootCAs: pool, ServerName: "redis.sluice.test"}, "sluice", "pw-of-sluice")
	pwFile := filepath.Join(dir, "pw")
	os.WriteFile(pwFile, []byte("pw-of-sluice\n"), 0o600)

	cfg := testConfig(t, false, srv.Addr)
	cfg.TLS, cfg.TLSCAFile, cfg.TLSServerName = true, caFile, "redis.sluice.test"
	cfg.Username, cfg.PasswordFile = "sluice", pwFile
	s := openTest(t, cfg)
	r := do(t, s, countertest.Rate("msgs:0:sender:tls@example.org", 10, time.Hour, 10))
	if !r[0].Allowed || r[0].Level != 1 {
		t.Fatalf("over TLS: %+v", r[0])
	}

	for name, edit := range map[string]func(*Config){
		"wrong server name": func(c *Config) { c.TLSServerName = "other.sluice.test" },
		"no CA":             func(c *Config) { c.TLSCAFile = "" },
		"wrong password":    func(c *Config) { c.PasswordFile, c.Password = "", "nope" },
		"no TLS":            func(c *Config) { c.TLS, c.TLSCAFile, c.TLSServerName = false, "", "" },
	} {
		bad := cfg
		edit(&bad)
		s := openTest(t, bad)
		err := s.Do(context.Background(), []counter.Request{countertest.Rate("msgs:0:k", 1, time.Hour, 1)})
		if err == nil {
			t.Errorf("%s: no error", name)
		}
		t.Logf("%s: %v", name, err)
	}
}

// leastACL is the ACL that docs/redis.md gives the store's user: its keys,
// and only the commands it sends and its scripts call.
var leastACL = strings.Fields(`resetkeys ~sluice:* resetchannels -@all
+hello +auth +client|setname +select +ping +time
+evalsha +eval +script|load
+get +set +del +pexpire
+hset +hdel +hgetall
+zadd +zrem +zcard +zcount +zscore +zrange +zremrangebyscore +zremrangebyrank`)

// The store needs no more than leastACL: every call works under it.
func TestLeastACL(t *testing.T) {
	args := append([]string{"--user", "sluice", "on", ">pw-of-sluice"}, leastACL...)
	srv := redistest.Start(t, args...)
	cfg := testConfig(t, false, srv.Addr)
	cfg.Prefix = "sluice:" + cfg.Prefix
	cfg.Username, cfg.Password = "sluice", "pw-of-sluice"
	cfg.LeaseTime, cfg.Timeout = conf.Duration(time.Second), conf.Duration(200*time.Millisecond)
	s := openTest(t, cfg)
	ctx := context.Background()
	for range 3 {
		do(t, s, countertest.Rate("msgs:0:sender:acl@example.org", 2, time.Hour, 2),
			countertest.Slots("conc:c:client_ip:192.0.2.3", 5, "s1"))
	}
	if err := s.SetAllow(ctx, "sender:vip@example.org", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if m, err := s.Allows(ctx); err != nil || len(m) != 1 {
		t.Fatalf("Allows: %v %v", m, err)
	}
	if err := s.flushHot(ctx); err != nil {
		t.Fatal(err)
	}
	if hot, err := s.Hot(ctx, 10); err != nil || len(hot) == 0 {
		t.Fatalf("Hot: %v %v", hot, err)
	}
	s.refreshLeases(ctx)
	if err := s.Reset(ctx, [][]byte{[]byte("msgs:0:sender:acl@example.org")}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Client().ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	do(t, s, countertest.Rate("msgs:0:sender:acl@example.org", 2, time.Hour, 2)) // EVAL after NOSCRIPT
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Errors != 0 || st.RefreshErrors != 0 {
		t.Errorf("errors under the ACL: %+v", st)
	}
	// And the ACL holds: the user cannot read other keys or run other commands.
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "sluice", Password: "pw-of-sluice"})
	defer c.Close()
	for name, err := range map[string]error{
		"GET outside the prefix": c.Get(ctx, "other").Err(),
		"FLUSHALL":               c.FlushAll(ctx).Err(),
		"CONFIG SET":             c.ConfigSet(ctx, "save", "").Err(),
		"KEYS":                   c.Keys(ctx, "*").Err(),
	} {
		if err == nil || !strings.Contains(err.Error(), "NOPERM") {
			t.Errorf("%s: %v, want NOPERM", name, err)
		}
	}
}
