package resolver

import (
	"container/list"
	"sync"
	"time"
)

type key struct {
	name  string // lower case, fully qualified
	qtype uint16
}

type entry struct {
	key     key
	ans     answer
	cost    int
	expires time.Time
}

// cache keeps answers for their TTL, at most size of them and maxBytes of
// memory in all (as answer.cost counts it), dropping the least recently
// used first. Counting bytes is what bounds it: a zone decides how big its
// answers are.
type cache struct {
	mu       sync.Mutex
	size     int
	maxBytes int
	bytes    int
	lru      *list.List // of *entry, most recent at the front
	index    map[key]*list.Element
}

func newCache(size, maxBytes int) *cache {
	return &cache{size: size, maxBytes: maxBytes, lru: list.New(), index: make(map[key]*list.Element)}
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
		c.remove(el)
		return answer{}, false
	}
	c.lru.MoveToFront(el)
	return e.ans, true
}

func (c *cache) put(k key, a answer, ttl time.Duration, now time.Time) {
	if c == nil || ttl <= 0 || c.size <= 0 {
		return
	}
	cost := a.cost(k.name)
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.index[k]; ok {
		c.remove(el)
	}
	if cost > c.maxBytes {
		return
	}
	for c.lru.Len() >= c.size || c.bytes+cost > c.maxBytes {
		c.remove(c.lru.Back())
	}
	c.index[k] = c.lru.PushFront(&entry{key: k, ans: a, cost: cost, expires: now.Add(ttl)})
	c.bytes += cost
}

func (c *cache) remove(el *list.Element) {
	e := c.lru.Remove(el).(*entry)
	delete(c.index, e.key)
	c.bytes -= e.cost
}

// usage is the number of answers kept and the bytes they are counted as.
func (c *cache) usage() (n, bytes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len(), c.bytes
}
