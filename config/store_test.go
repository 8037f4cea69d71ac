package config

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"sluice/smtp"
)

// With Redis down at start, the Redis backend still opens, with a local
// fallback, and rules answer by on_store_error at once: a MAIL FROM is
// tempfailed with the store's own reply, not the rule's.
func TestOpenRedisStoreDown(t *testing.T) {
	c, err := Parse("redis-down.toml", []byte(`
[store]
backend = "redis"
addrs = ["127.0.0.1:1"]
on_store_error = "tempfail"

[[limit]]
name = "m"
count = "messages"
per = "sender"
rate = "1/1h"
`))
	if err != nil {
		t.Fatal(err)
	}
	st, local, err := OpenStores(&c.Store, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if local == nil {
		t.Fatal("no local fallback")
	}
	defer local.Close()
	b, err := c.Build(Runtime{Store: st, Fallback: local})
	if err != nil {
		t.Fatal(err)
	}
	s := b.Engine.Open(smtp.Client{IP: netip.MustParseAddr("192.0.2.1")})
	defer s.Close(context.Background())
	s.Mail("x@example.org", "")
	d := s.Stage(context.Background(), smtp.Mail)
	if d.Kind != smtp.Reply || !strings.HasPrefix(d.Reply, "451 4.3.0 ") {
		t.Errorf("with Redis down: %+v; want the store's 451 4.3.0", d)
	}
}

// A rule's window longer than the Redis store can count exactly is refused
// with its line when the backend is Redis, and accepted in memory.
func TestRedisSpanAgainstRules(t *testing.T) {
	rule := `
[[limit]]
name = "yearly"
count = "messages"
per = "sender"
rate = "1000/365d"
`
	if _, err := Parse("memory.toml", []byte(rule)); err != nil {
		t.Errorf("memory store: %v", err)
	}
	_, err := Parse("redis.toml", []byte("[store]\nbackend = \"redis\"\naddrs = [\"127.0.0.1:6379\"]\n"+rule))
	if err == nil || !strings.Contains(err.Error(), "redis.toml:9: limit[1].rate: 1000/365d: the Redis store counts windows of up to 52 days") {
		t.Errorf("redis store: %v", err)
	}
}
