package limits

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"

	"sluice/limits/counter"
	"sluice/policy"
)

// Overrides give some keys limits of their own: a table file read with
// the config (each line "KEY RATE[, RATE...]", "KEY unlimited" or "KEY 0"),
// and runtime overrides set with `sluice counters limit`, kept in the
// store so that every host sharing it sees them at once. A key's limit is
// the first found of: its runtime override, its table line, then for an
// address key (sasl_user:alice@example.com) the same for its domain
// (sasl_user:@example.com), then the rule's own rate. A changed limit
// applies to the share of the window a key has used, as a changed rule
// does (see docs/limits.md): the count is not lost.

// overrides is a rule's overrides setting.
type overrides struct {
	path     string // the table file, "" for runtime overrides only
	table    *table // nil until New reads it, or for runtime only
	fallback bool   // the key holds an address: a domain key may stand for it
}

// limitSpec is a limit a key has instead of its rule's.
type limitSpec struct {
	windows   []window
	unlimited bool   // the rule does not apply to the key
	zero      bool   // nothing is allowed
	text      string // as written, normalised: "5/1h,50/1d", "unlimited", "0"
}

// maxOverridePeriod bounds an override's window to what both stores
// count exactly (the Redis store: 2^52 ns, about 52 days); the rules'
// own windows are checked against their store when the config loads.
const maxOverridePeriod = 1 << 52

// compileOverrides checks the overrides setting and, when read is set,
// reads the table.
func (c *rule) compileOverrides(r *Rule, read bool) error {
	if r.Overrides == "" {
		return nil
	}
	switch {
	case c.count == countConcurrent:
		return errors.New("a concurrent limit has no rate to override")
	case len(c.keyer.dims) == 0:
		return errors.New("a rule without a key (per) has no keys to override")
	}
	o := &overrides{}
	switch path, isFile := strings.CutPrefix(r.Overrides, "file:"); {
	case r.Overrides == "runtime":
	case isFile && path != "":
		o.path = path
	default:
		return fmt.Errorf("%q: want \"file:/path/to/table\" or \"runtime\"", r.Overrides)
	}
	if read && o.path != "" {
		t, err := loadTable(c, o.path)
		if err != nil {
			return err
		}
		o.table = t
	}
	o.fallback = c.keyer.has(dimSender) || c.keyer.has(dimRcpt) || c.keyer.has(dimSASLUser)
	c.over = o
	return nil
}

// parseSpec reads a limit as a table line or `sluice counters limit`
// writes it, for rule c.
func (c *rule) parseSpec(s string) (*limitSpec, error) {
	s = strings.TrimSpace(s)
	switch s {
	case "":
		return nil, errors.New("no limit (want RATE[, RATE...], unlimited or 0)")
	case "unlimited":
		return &limitSpec{unlimited: true, text: s}, nil
	case "0":
		return &limitSpec{zero: true, text: s}, nil
	}
	sp := &limitSpec{}
	var texts []string
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		w, err := parseRate(part, c.count == countBytes)
		if err != nil {
			return nil, err
		}
		if int64(w.period) > maxOverridePeriod {
			return nil, fmt.Errorf("rate %q: an override's window is at most 52 days", part)
		}
		sp.windows = append(sp.windows, w)
		texts = append(texts, part)
	}
	switch {
	case c.count == countDistinct && len(sp.windows) != 1:
		return nil, fmt.Errorf("%q: a distinct rule takes one rate", s)
	case len(sp.windows) > maxWindows:
		return nil, fmt.Errorf("%q: %d windows; a rule takes at most %d", s, len(sp.windows), maxWindows)
	}
	sp.text = strings.Join(texts, ",")
	return sp, nil
}

// normalKey reads a key as an admin writes it ("sasl_user:Alice@Example.com",
// "sasl_user:@example.com", "client_ip:192.0.2.0/24") into the dimension
// key rule c counts it under.
func (c *rule) normalKey(written string) ([]byte, error) {
	dims, f, err := parseDimKey(written)
	if err != nil {
		return nil, err
	}
	if !sameDims(c.keyer.dims, dims) {
		return nil, fmt.Errorf("key %q is per %s; rule %q counts per %s", written, dimList(dims), c.name, dimList(c.keyer.dims))
	}
	k, ok := c.keyer.appendKey(nil, &f)
	if !ok {
		return nil, fmt.Errorf("key %q: %s", written, c.keyer.missing(&f))
	}
	if c.keyer.has(dimClientIP) {
		if err := c.keyer.checkPrefix(written); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// checkPrefix refuses a client_ip network of another size than the
// rule's: its keys would never match one.
func (k *keyer) checkPrefix(written string) error {
	for part := range strings.SplitSeq(written, ",") {
		v, ok := strings.CutPrefix(part, "client_ip:")
		if !ok || !strings.Contains(v, "/") {
			continue
		}
		bits := k.ipv6Prefix
		if !strings.Contains(v, ":") {
			bits = k.ipv4Prefix
		}
		if !strings.HasSuffix(v, "/"+strconv.Itoa(bits)) {
			return fmt.Errorf("client_ip %s: the rule counts per /%d networks of this family (ipv4_prefix, ipv6_prefix)", v, bits)
		}
	}
	return nil
}

// appendDomainKey appends the key f falls back to: each address value
// (sender, rcpt, a SASL user with an '@') written "@domain". ok is false
// when the key has no address in it.
func (k *keyer) appendDomainKey(buf []byte, f *policy.Facts) (out []byte, ok bool) {
	changed := false
	for i, d := range k.dims {
		buf = append(buf, k.labels[i]...)
		start := len(buf)
		var a string
		switch d {
		case dimSender:
			a = trimPath(f.Sender)
		case dimRcpt:
			a = trimPath(f.Rcpt)
		case dimSASLUser:
			a = f.SASLUser
		}
		if at := strings.LastIndexByte(a, '@'); at >= 0 {
			buf = append(buf, '@')
			buf = appendNorm(buf, asciiDomain(strings.TrimRight(a[at+1:], ".")), true)
			changed = true
		} else if buf, ok = k.appendValue(buf, d, f); !ok {
			return buf, false
		}
		buf = boundValue(buf, start)
	}
	return buf, changed
}

// table is an overrides file: keys in one block of bytes, and an open
// addressing table of 24-byte slots over them, so that a million lines
// cost tens of bytes each and a look-up a hash and a compare.
type table struct {
	path    string
	slots   []tslot
	keys    []byte
	specs   []*limitSpec // the different limits, each parsed once
	n       int
	domains bool // some key is a domain fallback: look-ups try one
}

type tslot struct {
	h    uint64 // 0: empty
	off  uint32 // the key in keys
	line uint32
	spec uint32
	klen uint16
}

// maxTableLine bounds a line: a key of several dimensions, each bounded,
// and its rates.
const maxTableLine = 4096

// loadTable reads an overrides file for rule c. Every error names the
// file and line.
func loadTable(c *rule, path string) (*table, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	// Size the table from the file, a line being rarely under 20 bytes,
	// and the keys' block for the whole file: neither grows while the
	// file is read. Both are cut to size at the end.
	t := &table{path: path, keys: make([]byte, 0, min(fi.Size(), 1<<32-1))}
	t.grow(int(min(fi.Size()/20+16, 1<<26)))
	specs := make(map[string]uint32)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, maxTableLine), maxTableLine)
	var key []byte
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		if i := bytes.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		k, rest := line, []byte(nil)
		if i := bytes.IndexAny(line, " \t"); i >= 0 {
			k, rest = line[:i], line[i+1:]
		}
		si, ok := specs[string(rest)]
		if !ok {
			sp, err := c.parseSpec(string(rest))
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %s: %w", path, n, k, err)
			}
			si = uint32(len(t.specs))
			t.specs = append(t.specs, sp)
			specs[string(rest)] = si
		}
		key, err = c.tableKey(key[:0], string(k))
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		if first, dup := t.insert(key, si, uint32(n)); dup {
			return nil, fmt.Errorf("%s:%d: %s is given again (first at line %d)", path, n, k, first)
		}
		t.domains = t.domains || bytes.Contains(key, []byte(":@"))
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("%s: a line longer than %d bytes", path, maxTableLine)
		}
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	t.trim()
	return t, nil
}

// trim cuts the table and the keys' block to what they hold, so that a
// loaded table costs its entries, not the guess it was sized by.
func (t *table) trim() {
	t.keys = append([]byte(nil), t.keys...)
	if len(t.slots) <= (t.n*4/3+8)*5/4 {
		return
	}
	old := t.slots
	t.slots = make([]tslot, t.n*4/3+8)
	t.n = 0
	for _, s := range old {
		if s.h != 0 {
			t.place(s)
		}
	}
}

// tableKey normalises a table's key into buf.
func (c *rule) tableKey(buf []byte, written string) ([]byte, error) {
	k, err := c.normalKey(written)
	if err != nil {
		return buf, err
	}
	return append(buf, k...), nil
}

func tableHash(k []byte) uint64 { return xxhash.Sum64(k) | 1 }

// home is h's first slot: h's high bits scaled to the table size.
func (t *table) home(h uint64) int { return int(uint64(uint32(h>>32)) * uint64(len(t.slots)) >> 32) }

// grow makes room for n keys at a load of at most 3/4.
func (t *table) grow(n int) {
	old := t.slots
	t.slots = make([]tslot, max(n*4/3+8, len(old)*2))
	t.n = 0
	for _, s := range old {
		if s.h != 0 {
			t.place(s)
		}
	}
}

func (t *table) place(s tslot) {
	for i := t.home(s.h); ; {
		if t.slots[i].h == 0 {
			t.slots[i] = s
			t.n++
			return
		}
		if i++; i == len(t.slots) {
			i = 0
		}
	}
}

// insert adds key, or returns the line it is on already.
func (t *table) insert(key []byte, spec, line uint32) (uint32, bool) {
	if _, first, ok := t.lookup(key); ok {
		return first, true
	}
	if (t.n+1)*4 > len(t.slots)*3 {
		t.grow(len(t.slots))
	}
	off := len(t.keys)
	t.keys = append(t.keys, key...)
	t.place(tslot{h: tableHash(key), off: uint32(off), klen: uint16(len(key)), spec: spec, line: line})
	return 0, false
}

// lookup finds key: its limit and line.
func (t *table) lookup(key []byte) (*limitSpec, uint32, bool) {
	if t == nil || len(t.slots) == 0 {
		return nil, 0, false
	}
	h := tableHash(key)
	for i := t.home(h); ; {
		s := &t.slots[i]
		switch {
		case s.h == 0:
			return nil, 0, false
		case s.h == h && bytes.Equal(t.keys[s.off:s.off+uint32(s.klen)], key):
			return t.specs[s.spec], s.line, true
		}
		if i++; i == len(t.slots) {
			i = 0
		}
	}
}

// runtimeLimit is a runtime override as this engine last saw it.
type runtimeLimit struct {
	raw   []byte     // the stored value, which an override request expects
	spec  *limitSpec // nil when raw does not parse for the rule: it is ignored
	until int64      // Unix ns; 0: until removed
	by    string
	at    int64
}

// The stored value of a runtime override: "RATES|SET_AT_NS|BY".
func encodeRuntime(spec string, at time.Time, by string) []byte {
	by = strings.Map(func(r rune) rune {
		if r == '|' || r < ' ' || r == 0x7f {
			return '_'
		}
		return r
	}, by)
	return []byte(spec + "|" + strconv.FormatInt(at.UnixNano(), 10) + "|" + by)
}

func (c *rule) decodeRuntime(raw []byte, until int64) runtimeLimit {
	l := runtimeLimit{raw: raw, until: until}
	parts := strings.SplitN(string(raw), "|", 3)
	if len(parts) != 3 {
		return l
	}
	l.at, _ = strconv.ParseInt(parts[1], 10, 64)
	l.by = parts[2]
	l.spec, _ = c.parseSpec(parts[0])
	return l
}

// runtimeCache is the runtime overrides an engine knows of, by override
// store key ("rule:o:dimension"): learnt from the store when an event
// finds them changed, and from this host's own `limit` commands. Most
// keys have none, and a cache with none costs one atomic load.
type runtimeCache struct {
	any atomic.Bool
	mu  sync.RWMutex
	m   map[string]runtimeLimit
}

// maxRuntimeCache bounds the cache; when it is full it starts again, and
// the store tells each event what it lacks.
const maxRuntimeCache = 100_000

func (rc *runtimeCache) get(key []byte) (runtimeLimit, bool) {
	if !rc.any.Load() {
		return runtimeLimit{}, false
	}
	rc.mu.RLock()
	l, ok := rc.m[string(key)]
	rc.mu.RUnlock()
	return l, ok
}

func (rc *runtimeCache) set(key string, l runtimeLimit) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if l.raw == nil {
		delete(rc.m, key)
	} else {
		if rc.m == nil || len(rc.m) >= maxRuntimeCache {
			rc.m = make(map[string]runtimeLimit)
		}
		rc.m[key] = l
	}
	rc.any.Store(len(rc.m) > 0)
}

// replace puts m in force as the whole cache.
func (rc *runtimeCache) replace(m map[string]runtimeLimit) {
	if len(m) > maxRuntimeCache {
		return
	}
	rc.mu.Lock()
	rc.m = m
	rc.any.Store(len(m) > 0)
	rc.mu.Unlock()
}

// where says where a key's limit comes from, for explain and show.
type where struct {
	from  string // "rule", "table", "runtime"
	line  uint32 // table
	path  string // table
	by    string // runtime
	at    int64  // runtime, Unix ns
	until int64  // runtime, Unix ns; 0: until removed
	key   string // the override's key when it is a domain fallback
}

func (w where) String() string {
	switch w.from {
	case "table":
		s := fmt.Sprintf("table %s:%d", w.path, w.line)
		if w.key != "" {
			s += " (" + w.key + ")"
		}
		return s
	case "runtime":
		s := "runtime"
		if w.key != "" {
			s += " (" + w.key + ")"
		}
		if w.by != "" {
			s += ", set by " + w.by
		}
		if w.at != 0 {
			s += " at " + time.Unix(0, w.at).UTC().Format(time.RFC3339)
		}
		if w.until != 0 {
			s += ", until " + time.Unix(0, w.until).UTC().Format(time.RFC3339)
		}
		return s
	}
	return "rule"
}

// limitFor is the limit in force for dimension key dk of rule r (which
// has overrides), for the event of f. With s, the checks of the runtime
// overrides it consulted join the event, expecting what this engine
// knows of them, so that the store refuses the event if they changed;
// with w, it says where the limit comes from. Runtime overrides end when
// the store says so: the engine does not read the clock for them.
func (e *Engine) limitFor(r *rule, f *policy.Facts, s *Session, dk []byte, w *where) *limitSpec {
	var buf []byte
	if s != nil {
		buf = s.buf
	}
	sp, buf := e.lookupLimit(r, dk, s, buf, w, false)
	// A domain key is worth building only where something may hold it.
	if sp == nil && r.over.fallback && (e.overrider || e.runtime.any.Load() || r.over.table != nil && r.over.table.domains) {
		ks := len(buf)
		buf = append(buf, r.name...)
		buf = append(buf, ":o:"...)
		ds := len(buf)
		var ok bool
		if buf, ok = r.keyer.appendDomainKey(buf, f); ok {
			ddk := buf[ds:]
			sp, buf = e.lookupLimit(r, ddk, s, buf, w, true)
		} else {
			buf = buf[:ks]
		}
	}
	if s != nil {
		s.buf = buf
	}
	if sp == nil {
		if w != nil {
			*w = where{from: "rule"}
		}
		sp = r.own
	}
	return sp
}

// lookupLimit looks dk up in the runtime overrides, then in the table;
// the override's key is built into buf, which it returns. fallback says
// dk is a domain key standing for the event's.
func (e *Engine) lookupLimit(r *rule, dk []byte, s *Session, buf []byte, w *where, fallback bool) (*limitSpec, []byte) {
	name := func() string {
		if fallback {
			return string(dk)
		}
		return ""
	}
	var rl runtimeLimit
	have := false
	if e.overrider || e.runtime.any.Load() {
		ks := len(buf)
		buf = append(buf, r.name...)
		buf = append(buf, ":o:"...)
		buf = append(buf, dk...)
		okey := buf[ks:]
		rl, have = e.runtime.get(okey)
		if s != nil && e.overrider {
			s.reqs = append(s.reqs, counter.Request{})
			q := &s.reqs[len(s.reqs)-1]
			q.Key, q.Kind, q.Op, q.Member = okey, counter.KindOverride, counter.OpPeek, rl.raw
			s.owners = append(s.owners, r)
			s.via = append(s.via, nil)
		}
	}
	if have && rl.spec != nil {
		if w != nil {
			*w = where{from: "runtime", by: rl.by, at: rl.at, until: rl.until, key: name()}
		}
		return rl.spec, buf
	}
	t := r.over.table
	if t == nil || fallback && !t.domains {
		return nil, buf
	}
	if sp, line, ok := t.lookup(dk); ok {
		if w != nil {
			*w = where{from: "table", path: r.over.path, line: line, key: name()}
		}
		return sp, buf
	}
	return nil, buf
}

// learn takes in the runtime overrides a stale event was told of.
func (e *Engine) learn(s *Session) {
	for i := range s.reqs {
		q := &s.reqs[i]
		if q.Kind != counter.KindOverride {
			continue
		}
		if q.Member == nil {
			e.runtime.set(string(q.Key), runtimeLimit{})
			continue
		}
		e.runtime.set(string(q.Key), s.owners[i].decodeRuntime(bytes.Clone(q.Member), q.Until))
	}
}

// limitText is the limit in force for a store key of rule r, as verdicts
// show it.
func (e *Engine) limitText(r *rule, f *policy.Facts, storeKey []byte) string {
	return e.limitFor(r, f, nil, dimKey(storeKey), nil).text
}
