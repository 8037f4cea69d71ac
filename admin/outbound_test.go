package admin

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"sluice/limits"
)

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func (f *fake) Limit(ctx context.Context, rule, key, limit string, d time.Duration, by string) (limits.RuntimeLimit, error) {
	if rule != "rcpts" {
		return limits.RuntimeLimit{}, &limits.KeyError{Err: errors.New("no rule named " + rule)}
	}
	l := limits.RuntimeLimit{Rule: rule, Key: key, Limit: limit, By: by, At: t0, Known: true}
	if d > 0 {
		l.Until = t0.Add(d)
	}
	return l, nil
}

func (f *fake) Unlimit(ctx context.Context, rule, key string) (limits.RuntimeLimit, bool, error) {
	return limits.RuntimeLimit{Rule: rule, Key: key, Limit: "1/1h"}, key == "sasl_user:dave", nil
}

func (f *fake) Limits(ctx context.Context, rule string) ([]limits.RuntimeLimit, []limits.OverrideTable, error) {
	return []limits.RuntimeLimit{{Rule: "rcpts", Key: "sasl_user:dave", Limit: "1/1h", Known: true}},
		[]limits.OverrideTable{{Rule: "rcpts", Path: "/etc/sluice/quotas", Entries: 3}}, nil
}

func (f *fake) Restrictions(ctx context.Context, rule string) ([]limits.Restricted, error) {
	return []limits.Restricted{{Rule: "rcpts", Key: "sasl_user:alice", Since: t0, Count: 21, Held: []string{"Q1"}, Known: true}}, nil
}

func (f *fake) Release(ctx context.Context, key, rule string) ([]limits.Restricted, error) {
	rs, _ := f.Restrictions(ctx, rule)
	rs[0].GraceUntil = t0.Add(time.Hour)
	return rs, nil
}

// The runtime limits and restrictions go through the API and back.
func TestOutboundRoundTrip(t *testing.T) {
	sock, _ := serveFake(t)
	c := NewClient(sock)
	ctx := context.Background()
	ls, err := c.Limit(ctx, "rcpts", "sasl_user:dave", "1/1h", 24*time.Hour)
	if err != nil || len(ls) != 1 || ls[0].Limit != "1/1h" || !ls[0].Until.Equal(t0.Add(24*time.Hour)) || !strings.Contains(ls[0].By, "@") {
		t.Errorf("limit: %+v %v", ls, err)
	}
	if _, err := c.Limit(ctx, "nope", "sasl_user:dave", "1/1h", 0); err == nil || !strings.Contains(err.Error(), "no rule named nope") {
		t.Errorf("limit of an unknown rule: %v", err)
	}
	if ls, err := c.Unlimit(ctx, "rcpts", "sasl_user:dave"); err != nil || len(ls) != 1 {
		t.Errorf("unlimit: %+v %v", ls, err)
	}
	if ls, err := c.Unlimit(ctx, "rcpts", "sasl_user:erin"); err != nil || len(ls) != 0 {
		t.Errorf("unlimit of a key without one: %+v %v", ls, err)
	}
	ls, ts, err := c.Limits(ctx, "")
	if err != nil || len(ls) != 1 || len(ts) != 1 || ts[0].Entries != 3 {
		t.Errorf("limits: %+v %+v %v", ls, ts, err)
	}
	rs, err := c.Restricted(ctx, "")
	if err != nil || len(rs) != 1 || rs[0].Count != 21 || rs[0].Held[0] != "Q1" || !rs[0].Until.IsZero() {
		t.Errorf("restricted: %+v %v", rs, err)
	}
	rs, err = c.Release(ctx, "sasl_user:alice", "")
	if err != nil || len(rs) != 1 || !rs[0].GraceUntil.Equal(t0.Add(time.Hour)) {
		t.Errorf("release: %+v %v", rs, err)
	}
}
