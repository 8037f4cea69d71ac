package redisstore

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"sluice/guard"
)

// Exemptions live in one Redis hash, dimension key -> until (Unix ns), so
// that an exemption set on one host reaches the whole fleet.

func (s *Store) allowKey() string { return s.prefix + "allow" }

// nowNS is the store's idea of now for exemptions: the test clock, or
// this host's.
func (s *Store) nowNS() int64 {
	if s.now != nil {
		return s.now()
	}
	return time.Now().UnixNano()
}

// SetAllow exempts key until the given time; a zero or past time removes
// the exemption.
func (s *Store) SetAllow(ctx context.Context, key string, until time.Time) (err error) {
	defer guard.RecoverErr(s.plog, placeSetAllow, &err)
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.closed.Load() {
		return ErrClosed
	}
	err = s.call(ctx, placeSetAllow, func(ctx context.Context) error {
		if until.IsZero() || until.UnixNano() <= s.nowNS() {
			return s.client.HDel(ctx, s.allowKey(), key).Err()
		}
		return s.client.HSet(ctx, s.allowKey(), key, until.UnixNano()).Err()
	})
	if err != nil {
		return fmt.Errorf("redis store: set exemption: %w", err)
	}
	return nil
}

// Allows lists the exemptions in force; nil when there are none. Those
// that ran out are removed on the way.
func (s *Store) Allows(ctx context.Context) (_ map[string]time.Time, err error) {
	defer guard.RecoverErr(s.plog, placeAllows, &err)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.closed.Load() {
		return nil, ErrClosed
	}
	var all map[string]string
	err = s.call(ctx, placeAllows, func(ctx context.Context) error {
		var err error
		all, err = s.client.HGetAll(ctx, s.allowKey()).Result()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("redis store: exemptions: %w", err)
	}
	now := s.nowNS()
	var out map[string]time.Time
	var over []string
	for k, v := range all {
		until, err := strconv.ParseInt(v, 10, 64)
		if err != nil || until <= now {
			over = append(over, k)
			continue
		}
		if out == nil {
			out = make(map[string]time.Time)
		}
		out[k] = time.Unix(0, until)
	}
	if len(over) > 0 {
		s.call(ctx, placeAllows, func(ctx context.Context) error { return s.client.HDel(ctx, s.allowKey(), over...).Err() })
	}
	return out, nil
}
