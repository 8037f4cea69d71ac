package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/user"
	"time"

	"go.uber.org/zap"

	"sluice/conf"
	"sluice/limits"
	"sluice/smtp"
)

// RuntimeLimit is a key's runtime limit as the API shows it.
type RuntimeLimit struct {
	Rule     string    `json:"rule"`
	Key      string    `json:"key"`
	Limit    string    `json:"limit"` // "5/1h,50/1d", "unlimited", "0"
	By       string    `json:"by,omitempty"`
	At       time.Time `json:"at,omitzero"`
	Until    time.Time `json:"until,omitzero"` // absent: until removed
	InConfig bool      `json:"in_config"`
}

// OverrideTable is a rule's overrides file as loaded.
type OverrideTable struct {
	Rule    string `json:"rule"`
	Path    string `json:"path"`
	Entries int    `json:"entries"`
}

// Restriction is a restricted key as the API shows it.
type Restriction struct {
	Rule       string    `json:"rule"`
	Key        string    `json:"key"`
	Since      time.Time `json:"since"`
	Until      time.Time `json:"until,omitzero"` // absent: until released (or, with grace, the grace's end)
	Count      int64     `json:"count"`
	Limit      string    `json:"limit,omitempty"`
	Grace      bool      `json:"grace,omitempty"` // released; not restricted again before Until
	Held       []string  `json:"held,omitempty"`  // queue ids of messages held meanwhile
	GraceUntil time.Time `json:"grace_until,omitzero"`
	InConfig   bool      `json:"in_config"`
}

func fromRuntime(ls []limits.RuntimeLimit) []RuntimeLimit {
	out := make([]RuntimeLimit, len(ls))
	for i, l := range ls {
		out[i] = RuntimeLimit{Rule: l.Rule, Key: l.Key, Limit: l.Limit, By: l.By, At: l.At, Until: l.Until, InConfig: l.Known}
	}
	return out
}

func fromRestricted(rs []limits.Restricted) []Restriction {
	out := make([]Restriction, len(rs))
	for i, r := range rs {
		out[i] = Restriction{Rule: r.Rule, Key: r.Key, Since: r.Since, Until: r.Until, Count: r.Count, Limit: r.Limit,
			Grace: r.Grace, Held: r.Held, GraceUntil: r.GraceUntil, InConfig: r.Known}
	}
	return out
}

// maxBy bounds who an admin says they are.
const maxBy = 100

func (h *handler) limit(w http.ResponseWriter, r *http.Request) {
	key, ok := h.key(w, r)
	if !ok {
		return
	}
	rule, spec := r.FormValue("rule"), r.FormValue("limit")
	if rule == "" || spec == "" {
		h.fail(w, http.StatusBadRequest, errors.New("want RULE, KEY and LIMIT, e.g. limit rcpts sasl_user:dave@example.com 100/1h"))
		return
	}
	var d time.Duration
	if f := r.FormValue("for"); f != "" {
		var err error
		if d, err = conf.ParseDuration(f); err != nil {
			h.fail(w, http.StatusBadRequest, fmt.Errorf("-for %q: want a duration such as 24h or 7d", f))
			return
		}
	}
	by := smtp.ASCII(r.FormValue("by"), maxBy)
	l, err := h.engine().Limit(r.Context(), rule, key, spec, d, by)
	if err != nil {
		h.fail(w, status(err), err)
		return
	}
	h.log.Info("runtime limit set by admin", zap.String("rule", l.Rule), zap.String("key", l.Key), zap.String("limit", l.Limit),
		zap.String("by", l.By), zap.Time("until", l.Until))
	h.write(w, http.StatusOK, response{Limits: fromRuntime([]limits.RuntimeLimit{l})})
}

func (h *handler) unlimit(w http.ResponseWriter, r *http.Request) {
	key, ok := h.key(w, r)
	if !ok {
		return
	}
	was, had, err := h.engine().Unlimit(r.Context(), r.FormValue("rule"), key)
	if err != nil {
		h.fail(w, status(err), err)
		return
	}
	resp := response{}
	if had {
		resp.Limits = fromRuntime([]limits.RuntimeLimit{was})
		h.log.Info("runtime limit removed by admin", zap.String("rule", was.Rule), zap.String("key", was.Key), zap.String("limit", was.Limit))
	}
	h.write(w, http.StatusOK, resp)
}

func (h *handler) limits(w http.ResponseWriter, r *http.Request) {
	ls, ts, err := h.engine().Limits(r.Context(), r.FormValue("rule"))
	if err != nil {
		h.fail(w, status(err), err)
		return
	}
	resp := response{Limits: fromRuntime(ls)}
	for _, t := range ts {
		resp.Tables = append(resp.Tables, OverrideTable{Rule: t.Rule, Path: t.Path, Entries: t.Entries})
	}
	h.write(w, http.StatusOK, resp)
}

func (h *handler) restricted(w http.ResponseWriter, r *http.Request) {
	rs, err := h.engine().Restrictions(r.Context(), r.FormValue("rule"))
	if err != nil {
		h.fail(w, status(err), err)
		return
	}
	h.write(w, http.StatusOK, response{Restrictions: fromRestricted(rs)})
}

func (h *handler) release(w http.ResponseWriter, r *http.Request) {
	key, ok := h.key(w, r)
	if !ok {
		return
	}
	rs, err := h.engine().Release(r.Context(), key, r.FormValue("rule"))
	if err != nil {
		h.fail(w, status(err), err)
		return
	}
	for _, x := range rs {
		h.log.Info("restriction released by admin", zap.String("rule", x.Rule), zap.String("key", x.Key),
			zap.Int("held", len(x.Held)), zap.Time("grace_until", x.GraceUntil))
	}
	h.write(w, http.StatusOK, response{Restrictions: fromRestricted(rs)})
}

// Limit gives key a runtime limit under rule for d (0: until Unlimit);
// the request says who asks (the user behind sudo, on this host).
func (c *Client) Limit(ctx context.Context, rule, key, limit string, d time.Duration) ([]RuntimeLimit, error) {
	q := url.Values{"rule": {rule}, "key": {key}, "limit": {limit}, "by": {whoAmI()}}
	if d > 0 {
		q.Set("for", d.String())
	}
	r, err := c.do(ctx, http.MethodPost, "limit", q)
	return r.Limits, err
}

// Unlimit removes key's runtime limit under rule; it returns the limit
// removed, none when there was none.
func (c *Client) Unlimit(ctx context.Context, rule, key string) ([]RuntimeLimit, error) {
	r, err := c.do(ctx, http.MethodPost, "unlimit", url.Values{"rule": {rule}, "key": {key}})
	return r.Limits, err
}

// Limits lists the runtime limits (of rule, or all) and the tables loaded.
func (c *Client) Limits(ctx context.Context, rule string) ([]RuntimeLimit, []OverrideTable, error) {
	r, err := c.do(ctx, http.MethodGet, "limits", url.Values{"rule": {rule}})
	return r.Limits, r.Tables, err
}

// Restricted lists the restricted keys (of rule, or all).
func (c *Client) Restricted(ctx context.Context, rule string) ([]Restriction, error) {
	r, err := c.do(ctx, http.MethodGet, "restricted", url.Values{"rule": {rule}})
	return r.Restrictions, err
}

// Release lifts key's restrictions (under rule, or all) and returns them
// as they were, with the queue ids of the mail held meanwhile.
func (c *Client) Release(ctx context.Context, key, rule string) ([]Restriction, error) {
	r, err := c.do(ctx, http.MethodPost, "release", url.Values{"key": {key}, "rule": {rule}})
	return r.Restrictions, err
}

// whoAmI names the admin: the user behind sudo, else this one, at this
// host.
func whoAmI() string {
	name := os.Getenv("SUDO_USER")
	if name == "" {
		if u, err := user.Current(); err == nil {
			name = u.Username
		}
	}
	host, _ := os.Hostname()
	return name + "@" + host
}
