package resolver

import (
	"container/list"
	"sync"
	"time"

	"github.com/miekg/dns"
)

type key struct {
	name  string // lower case, fully qualified
	qtype uint16
}

// answer is the outcome of one question: the records of the asked type at
// the end of any CNAME chain, or a negative answer.
type answer struct {
	rrs      []dns.RR
	nxdomain bool
}

type entry struct {
	key     key
	ans     answer
	expires time.Time
}

// cache keeps answers for their TTL, at most size of them, dropping the
// least recently used first.
type cache struct {
	mu    sync.Mutex
	size  int
	lru   *list.List // of *entry, most recent at the front
	index map[key]*list.Element
}

func newCache(size int) *cache {
	return &cache{size: size, lru: list.New(), index: make(map[key]*list.Element)}
}

func (c *cache) get(k key, now time.Time) (answer, bool) {
	if c == nil {
		return answer{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.index[k]
	if !ok {
		return answer{}, false
	}
	e := el.Value.(*entry)
	if !now.Before(e.expires) {
		c.lru.Remove(el)
		delete(c.index, k)
		return answer{}, false
	}
	c.lru.MoveToFront(el)
	return e.ans, true
}

func (c *cache) put(k key, a answer, ttl time.Duration, now time.Time) {
	if c == nil || ttl <= 0 || c.size <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.index[k]; ok {
		e := el.Value.(*entry)
		e.ans, e.expires = a, now.Add(ttl)
		c.lru.MoveToFront(el)
		return
	}
	for c.lru.Len() >= c.size {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.index, old.Value.(*entry).key)
	}
	c.index[k] = c.lru.PushFront(&entry{key: k, ans: a, expires: now.Add(ttl)})
}

func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
