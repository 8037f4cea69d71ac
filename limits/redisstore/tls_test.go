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
	"testing"
	"time"

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
