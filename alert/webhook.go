package alert

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
)

// SignatureHeader carries "sha256=" and the hex HMAC-SHA256 of the body
// under the alert's secret: a receiver recomputes it over the bytes it
// got and compares in constant time.
const SignatureHeader = "X-Sluice-Signature"

// Sign is the value of SignatureHeader for body.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// loadRoots is the system's trusted roots plus the PEM certificates of
// file.
func loadRoots(file string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

// newWebhook makes the sender of a webhook target: a POST of the event as
// JSON, over TLS verified against the system's roots (and ca_file's).
// Redirects are not followed: a signed alert goes where it was sent.
func newWebhook(c Config) (func(context.Context, *Event) error, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pool, err := loadRoots(c.CAFile)
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	client := &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	url, secret := c.Webhook, []byte(c.Secret)
	return func(ctx context.Context, ev *Event) error {
		body, err := json.Marshal(ev)
		if err != nil {
			return &permanentError{err}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return &permanentError{err}
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "sluice-alert")
		if len(secret) > 0 {
			req.Header.Set(SignatureHeader, Sign(secret, body))
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		switch {
		case resp.StatusCode >= 200 && resp.StatusCode < 300:
			return nil
		case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
			return fmt.Errorf("webhook answered %s", resp.Status)
		}
		return &permanentError{errors.New("webhook answered " + resp.Status)}
	}, nil
}
