package memstore

// The snapshot records of distinct sets, restrictions and overrides,
// after the counters (see snapshot.go for the file's frame):
//
//	'S' seed:u64                                            the members' hash seed, at most once
//	'D' hash:u64 exp:i64 n:u16 (1..) n × (member:u64 seen:i64)   one distinct set
//	'R' since:i64 until:i64 count:i64 grace:u8 n:u16 n × (len:u8 id) len:u16 key   a restriction
//	'O' until:i64 len:u16 key len:u16 value                  a runtime override
const (
	tagSeed     = 'S'
	tagDistinct = 'D'
	tagRestrict = 'R'
	tagOverride = 'O'
)

func isExtTag(t byte) bool {
	return t == tagSeed || t == tagDistinct || t == tagRestrict || t == tagOverride
}

// maxHeldTotal bounds the queue ids kept across all restrictions, in the
// store and so in a snapshot.
const maxHeldTotal = 1_000_000

// extRecords is what a reader of a snapshot hears of these records.
type extRecords interface {
	seed(v uint64)
	distinct(h uint64, exp int64, ms []member) error
	restrict(key []byte, r restriction)
	override(key, value []byte, until int64)
}

// encodeExt writes the records; the counters' shards are locked one at a
// time, as encodeSnapshot does.
func (s *Store) encodeExt(e *encoder) {
	e.u8(tagSeed)
	e.u64(s.ext.seed.v)
	var ms []member
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		now := s.now()
		type set struct {
			h   uint64
			exp int64
			n   int
		}
		var sets []set
		ms = ms[:0]
		if sh.ext != nil {
			for h, ds := range sh.ext.sets {
				if ds.exp <= now || len(ds.members) == 0 {
					continue
				}
				n := min(len(ds.members), 1<<16-1)
				sets = append(sets, set{h, ds.exp, n})
				ms = append(ms, ds.members[:n]...)
			}
		}
		sh.mu.Unlock()
		off := 0
		for _, st := range sets {
			e.u8(tagDistinct)
			e.u64(st.h)
			e.u64(uint64(st.exp))
			e.u16(uint16(st.n))
			for _, m := range ms[off : off+st.n] {
				e.u64(m.h)
				e.u64(uint64(m.seen))
			}
			off += st.n
		}
	}
	for _, r := range s.ext.restr.snapshot(s.now()) {
		if len(r.key) > maxName {
			continue
		}
		e.u8(tagRestrict)
		e.u64(uint64(r.since))
		e.u64(uint64(r.until))
		e.u64(uint64(r.count))
		e.u8(boolByte(r.grace))
		e.u16(uint16(len(r.held)))
		for _, id := range r.held {
			e.u8(uint8(len(id)))
			e.w.WriteString(id)
			e.d.WriteString(id)
		}
		e.name(r.key)
	}
	for _, o := range s.ext.over.snapshot(s.now()) {
		if len(o.key) > maxName || len(o.value) > maxName {
			continue
		}
		e.u8(tagOverride)
		e.u64(uint64(o.until))
		e.name(o.key)
		e.name(string(o.value))
	}
}

type namedRestriction struct {
	key string
	restriction
}

func (rs *restrictSet) snapshot(now int64) []namedRestriction {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	var out []namedRestriction
	for k, r := range rs.m {
		if r.blocks(now) {
			c := *r
			c.held = append([]string(nil), r.held...)
			out = append(out, namedRestriction{k, c})
		}
	}
	return out
}

type namedOverride struct {
	key string
	override
}

func (ov *overrideSet) snapshot(now int64) []namedOverride {
	ov.mu.Lock()
	defer ov.mu.Unlock()
	var out []namedOverride
	for k, o := range ov.m {
		if o.live(now) {
			out = append(out, namedOverride{k, o})
		}
	}
	return out
}

// extCounts bounds what one file may hold of each record.
type extCounts struct {
	seeds, restrictions, overrides, held int
}

// ext reads one record of a tag isExtTag knows.
func (d *decoder) ext(tag byte, rec extRecords, n *extCounts) {
	switch tag {
	case tagSeed:
		v := d.u64()
		if n.seeds++; n.seeds > 1 {
			d.fail("more than one member seed")
		}
		if d.err == nil {
			rec.seed(v)
		}
	case tagDistinct:
		h, exp, k := d.u64(), d.i64(), int(d.u16())
		if h == 0 || k == 0 || exp <= 0 || exp > maxTAT {
			d.fail("invalid distinct set %x", h)
		}
		ms := make([]member, 0, min(k, 256))
		for range k {
			if d.err != nil {
				break
			}
			m := member{h: d.u64(), seen: d.i64()}
			if m.seen <= 0 || m.seen > micros(exp) {
				d.fail("invalid distinct member seen at %d", m.seen)
			}
			ms = append(ms, m)
		}
		if d.err == nil {
			d.err = rec.distinct(h, exp, ms)
		}
	case tagRestrict:
		var r restriction
		r.since, r.until, r.count = d.i64(), d.i64(), d.i64()
		g := d.u8()
		r.grace = g == 1
		k := int(d.u16())
		if r.since <= 0 || r.until < 0 || r.count < 0 || g > 1 || k > 1<<16-1 || r.grace && r.until == 0 {
			d.fail("invalid restriction")
		}
		if n.held += k; n.held > maxHeldTotal {
			d.fail("more than %d held queue ids", maxHeldTotal)
		}
		for range k {
			if d.err != nil {
				break
			}
			id := make([]byte, d.u8())
			d.bytes(id)
			r.held = append(r.held, string(id))
		}
		key := d.readName()
		if n.restrictions++; n.restrictions > maxRestrictions {
			d.fail("more than %d restrictions", maxRestrictions)
		}
		if d.err == nil {
			rec.restrict(key, r)
		}
	case tagOverride:
		until := d.i64()
		key := string(d.readName())
		value := d.readName()
		if until < 0 {
			d.fail("invalid override of %q", clip([]byte(key)))
		}
		if n.overrides++; n.overrides > maxOverrides {
			d.fail("more than %d overrides", maxOverrides)
		}
		if d.err == nil {
			rec.override([]byte(key), value, until)
		}
	}
}

func (*tally) seed(uint64)                            {}
func (*tally) distinct(uint64, int64, []member) error { return nil }
func (*tally) restrict([]byte, restriction)           {}
func (*tally) override([]byte, []byte, int64)         {}

func (in *installer) seed(v uint64) { in.s.ext.seed = memberSeed{v} }

// distinct installs a set whose window has not passed, within its
// shard's share of max_keys; the members of a file written with a larger
// max_keys that do not fit are left out.
func (in *installer) distinct(h uint64, exp int64, ms []member) error {
	if exp <= in.now {
		return nil
	}
	sh := in.s.shard(h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.ext == nil {
		sh.ext = &shardExt{sets: make(map[uint64]*distinctSet)}
	}
	if _, dup := sh.ext.sets[h]; dup || sh.ext.members+len(ms) > sh.limit {
		in.dropped++
		return nil
	}
	if in.probes += len(ms); in.probes > in.budget {
		return errCrowded
	}
	sh.ext.sets[h] = &distinctSet{exp: exp, members: ms}
	sh.ext.members += len(ms)
	return nil
}

func (in *installer) restrict(key []byte, r restriction) {
	if r.blocks(in.now) {
		in.s.ext.restr.put(string(key), &r, in.now)
	}
}

func (in *installer) override(key, value []byte, until int64) {
	if until == 0 || until > in.now {
		// readSnapshot bounds their number by the store's own.
		in.s.ext.over.set(string(key), value, until, in.now)
	}
}

// forgetExt drops what a failed load installed of these records.
func (s *Store) forgetExt() {
	s.ext.restr.mu.Lock()
	clear(s.ext.restr.m)
	s.ext.restr.held = 0
	s.ext.restr.any.Store(false)
	s.ext.restr.mu.Unlock()
	s.ext.over.mu.Lock()
	clear(s.ext.over.m)
	s.ext.over.any.Store(false)
	s.ext.over.mu.Unlock()
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		sh.ext = nil
		sh.mu.Unlock()
	}
}
