package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Client talks to a running sluice's admin endpoint.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the endpoint at socket.
func NewClient(socket string) *Client {
	var d net.Dialer
	return &Client{socket: socket, http: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, "unix", socket)
			},
		},
	}}
}

// Top lists up to n counters closest to or over their limit, for rule or all.
func (c *Client) Top(ctx context.Context, rule string, n int) ([]Counter, error) {
	r, err := c.do(ctx, http.MethodGet, "top", url.Values{"rule": {rule}, "n": {strconv.Itoa(n)}})
	return r.Counters, err
}

// Show reads the counters of a dimension key, for rule or all.
func (c *Client) Show(ctx context.Context, key, rule string) ([]Counter, error) {
	r, err := c.do(ctx, http.MethodGet, "show", url.Values{"key": {key}, "rule": {rule}})
	return r.Counters, err
}

// Reset forgets the counters of a dimension key, for rule or all, and
// returns them as they were.
func (c *Client) Reset(ctx context.Context, key, rule string) ([]Counter, error) {
	r, err := c.do(ctx, http.MethodPost, "reset", url.Values{"key": {key}, "rule": {rule}})
	return r.Counters, err
}

// Allow exempts a dimension key from every rule for d (0 lifts it).
func (c *Client) Allow(ctx context.Context, key string, d time.Duration) ([]Exemption, error) {
	r, err := c.do(ctx, http.MethodPost, "allow", url.Values{"key": {key}, "for": {d.String()}})
	return r.Exemptions, err
}

// Allows lists the exemptions in force.
func (c *Client) Allows(ctx context.Context) ([]Exemption, error) {
	r, err := c.do(ctx, http.MethodGet, "allows", nil)
	return r.Exemptions, err
}

func (c *Client) do(ctx context.Context, method, op string, q url.Values) (response, error) {
	var resp response
	u := "http://sluice/v1/counters/" + op
	var body io.Reader
	if method == http.MethodGet {
		if len(q) > 0 {
			u += "?" + q.Encode()
		}
	} else {
		body = strings.NewReader(q.Encode())
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return resp, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	hr, err := c.http.Do(req)
	if err != nil {
		return resp, c.dialError(err)
	}
	defer hr.Body.Close()
	if err := json.NewDecoder(io.LimitReader(hr.Body, 64<<20)).Decode(&resp); err != nil {
		return resp, fmt.Errorf("admin endpoint %s: %s: unreadable answer: %v", c.socket, hr.Status, err)
	}
	if resp.Error != "" {
		return resp, errors.New(resp.Error)
	}
	if hr.StatusCode != http.StatusOK {
		return resp, fmt.Errorf("admin endpoint %s: %s", c.socket, hr.Status)
	}
	return resp, nil
}

// dialError says what to do about the usual reasons a connection fails.
func (c *Client) dialError(err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("no sluice answers on %s: is it running, with [admin] socket = %q in its config? (%v)", c.socket, c.socket, err)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("%s: permission denied: run as root or as sluice's user (%v)", c.socket, err)
	}
	return fmt.Errorf("admin endpoint %s: %w", c.socket, err)
}
