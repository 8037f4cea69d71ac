package redisstore

import (
	"crypto/sha1"
	"encoding/hex"
)

// script is a Lua script and its SHA-1, by which EVALSHA names it.
type script struct{ src, sha string }

func newScript(src string) *script {
	h := sha1.Sum([]byte(src))
	return &script{src: src, sha: hex.EncodeToString(h[:])}
}

// Lua in Redis has only doubles: integers are exact up to 2^53. Times are
// Unix nanoseconds (about 2^60), so the scripts keep "now" as seconds and
// nanoseconds apart and do the GCRA arithmetic on nanoseconds relative to
// now, which the store bounds to MaxSpan; every product, sum and quotient
// then stays exact. A rate key holds its theoretical arrival time (tat) as
// decimal Unix nanoseconds and expires when the bucket is empty again; a
// concurrency key is a sorted set of holders scored by lease expiry (Unix
// milliseconds of the Redis clock).

// MaxSpan bounds interval×burst, interval×cost and the stored tat - now:
// 2^52 ns, about 52 days. Sums of two stay within 2^53.
const MaxSpan = 1 << 52

// Fields per request in the take script's ARGV, after the 4 header
// fields, and results per request in its reply.
const (
	argHeader = 4
	argStride = 9
	resStride = 6
)

// relLua reads a stored time (decimal Unix ns) against now_s, now_ns:
// rel gives the nanoseconds until it (0 when past), until_live whether an
// end ("0": none) is still to come.
const relLua = `
local function rel(v)
  if not v then return 0 end
  local s = tonumber(string.sub(v, 1, -10)) or 0
  local n = tonumber(string.sub(v, -9)) or 0
  local d = (s - now_s) * 1000000000 + (n - now_ns)
  if d < 0 then return 0 end
  return d
end
local function until_live(u)
  return u == '0' or (u ~= nil and u ~= false and rel(u) > 0)
end
`

// takeScript runs the requests of one event (on one slot under Cluster)
// as counter.Store.Do documents: check the runtime overrides the event
// was built with (any other than expected: apply nothing), judge every
// request on the state before the event, refuse the event when a
// blocking take is denied, then apply what is allowed (or strict), and
// restrict the keys whose group crossed.
//
// ARGV: now_s, now_ns (both "" to use Redis's TIME), lease_ms, min_ttl_ms,
// then per key: kind (0 rate, 1 concurrent, 2 distinct, 3 restrict,
// 4 override), op (0 take, 1 refund, 2 peek), interval, burst, cost,
// flags (1 blocking, 2 strict), text (concurrent: the holder; distinct:
// the member; override: the value expected, "" for none), group, until
// (restrict: Unix ns, 0 for until released).
// Returns per key: allowed (0/1; an override: 0 when it is not the one
// expected, and nothing else was done), retry_ns, level, applied (0/1),
// changed (0/1), and for a distinct member renewed, when it was seen
// before (µs), so that a refund across slots can put it back.
//
// A distinct key is a sorted set of members scored by when they were
// last seen, in Unix µs (exact in a double), trimmed to the burst+1 most
// recent. A restriction is a hash: st ("r" restricted, "g" in a grace
// after a release), since, until (Unix ns; "0": until released), count.
// An override is a hash: v (the value), u (until, Unix ns; "0": none).
var takeScript = newScript(`
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local real_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_s, now_ns = tonumber(t[1]), tonumber(t[2]) * 1000
if ARGV[1] ~= '' then now_s, now_ns = tonumber(ARGV[1]), tonumber(ARGV[2]) end
local lease = tonumber(ARGV[3])
local min_ttl = tonumber(ARGV[4])
local max_span = 4503599627370496
local now_us = now_s * 1000000 + math.floor(now_ns / 1000)

local function divmod(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  if r < 0 then q, r = q - 1, r + b elseif r >= b then q, r = q + 1, r - b end
  return q, r
end
local function ceildiv(a, b)
  if a <= 0 then return 0 end
  local q, r = divmod(a, b)
  if r > 0 then q = q + 1 end
  return q
end
` + relLua + `
local function ttl_of(d)
  local ttl = ceildiv(d, 1000000) + 1
  if ttl < min_ttl then ttl = min_ttl end
  return ttl
end
local function store(key, d)
  if d <= 0 then
    redis.call('DEL', key)
    return
  end
  local q, r = divmod(now_ns + d, 1000000000)
  redis.call('SET', key, string.format('%d%09d', now_s + q, r), 'PX', ttl_of(d))
end

local n = #KEYS
local res = {}
for i = 1, n * 6 do res[i] = 0 end

-- The overrides first: built with the wrong limits, the event does nothing.
local stale = false
for i = 1, n do
  local b = 4 + (i - 1) * 9
  if ARGV[b + 1] == '4' then
    local h = redis.call('HMGET', KEYS[i], 'v', 'u')
    local v = h[1]
    if v and not until_live(h[2]) then v = false end
    local want = ARGV[b + 7]
    if (want == '' and v) or (want ~= '' and v ~= want) then
      stale = true
    else
      res[i * 6 - 5] = 1
    end
  end
end
if stale then return res end

local state = {}
local held = {}
local refused = false
for i = 1, n do
  local b = 4 + (i - 1) * 9
  local kind, op = ARGV[b + 1], ARGV[b + 2]
  local key = KEYS[i]
  local allowed, retry, level = 1, 0, 0
  if kind == '0' then
    local iv, burst, cost = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
    local d = state[key]
    if d == nil then
      d = rel(redis.call('GET', key))
      state[key] = d
    end
    if op ~= '1' then
      local diff = d + iv * cost
      local tol = iv * burst
      if diff > tol then allowed, retry = 0, diff - tol end
    end
    level = ceildiv(d, iv)
  elseif kind == '1' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', real_ms)
    level = redis.call('ZCARD', key)
    if op ~= '1' and level >= tonumber(ARGV[b + 4]) then allowed = 0 end
  elseif kind == '2' then
    local w_us, burst, member = math.floor(tonumber(ARGV[b + 3]) / 1000), tonumber(ARGV[b + 4]), ARGV[b + 7]
    local lo = string.format('(%d', now_us - w_us)
    level = redis.call('ZCOUNT', key, lo, '+inf')
    local present = false
    if member ~= '' then
      local sc = redis.call('ZSCORE', key, member)
      present = sc and tonumber(sc) > now_us - w_us
    end
    held[i] = present
    if op ~= '1' and not present and level >= burst then
      allowed = 0
      if burst <= 0 then
        retry = tonumber(ARGV[b + 3])
      else
        local r = redis.call('ZREVRANGEBYSCORE', key, '+inf', lo, 'WITHSCORES', 'LIMIT', burst - 1, 1)
        retry = (tonumber(r[2]) + w_us - now_us) * 1000 - now_ns % 1000
      end
    end
  elseif kind == '3' then
    local h = redis.call('HMGET', key, 'st', 'until', 'count')
    local restricted = h[1] == 'r' and until_live(h[2])
    held[i] = restricted or (h[1] == 'g' and until_live(h[2]))
    if restricted then
      allowed, level = 0, tonumber(h[3]) or 0
      if h[2] ~= '0' then retry = rel(h[2]) end
    end
  end
  if allowed == 0 and op == '0' and tonumber(ARGV[b + 6]) % 2 == 1 then refused = true end
  res[i * 6 - 5], res[i * 6 - 4], res[i * 6 - 3] = allowed, retry, level
end

-- The count that crossed each group: what a restriction of it records.
local crossed = {}
for i = 1, n do
  local b = 4 + (i - 1) * 9
  local kind, group = ARGV[b + 1], ARGV[b + 8]
  if (kind == '0' or kind == '1' or kind == '2') and group ~= '0' and ARGV[b + 2] == '0' and res[i * 6 - 5] == 0 and crossed[group] == nil then
    local c = res[i * 6 - 3] + tonumber(ARGV[b + 5])
    if c < 1 then c = 1 end
    crossed[group] = c
  end
end

for i = 1, n do
  local b = 4 + (i - 1) * 9
  local kind, op = ARGV[b + 1], ARGV[b + 2]
  local strict = tonumber(ARGV[b + 6]) >= 2
  local key = KEYS[i]
  if kind == '3' then
    local c = crossed[ARGV[b + 8]]
    if op == '0' and c and not held[i] then
      local u = ARGV[b + 9]
      redis.call('DEL', key)
      redis.call('HSET', key, 'st', 'r', 'since', string.format('%d%09d', now_s, now_ns), 'until', u, 'count', c)
      if u ~= '0' then redis.call('PEXPIRE', key, ttl_of(rel(u))) end
      res[i * 6 - 3], res[i * 6 - 2], res[i * 6 - 1] = c, 1, 1
    end
  elseif kind ~= '4' and op ~= '2' and (strict or (res[i * 6 - 5] == 1 and not refused)) then
    if kind == '0' then
      local iv, cost = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 5])
      local d = state[key]
      if op == '1' then
        d = d - iv * cost
        if d < 0 then d = 0 end
      else
        d = d + iv * cost
        if d > max_span then d = max_span end
      end
      state[key] = d
      store(key, d)
      res[i * 6 - 3] = ceildiv(d, iv)
    elseif kind == '1' then
      local holder = ARGV[b + 7]
      if op == '1' then
        redis.call('ZREM', key, holder)
      else
        redis.call('ZADD', key, real_ms + lease, holder)
        redis.call('PEXPIRE', key, lease * 2)
      end
      res[i * 6 - 3] = redis.call('ZCARD', key)
    else
      local iv, burst, member = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), ARGV[b + 7]
      local w_us = math.floor(iv / 1000)
      redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%d', now_us - w_us))
      if op == '1' then
        if ARGV[b + 9] ~= '0' then
          redis.call('ZADD', key, ARGV[b + 9], member)
        else
          redis.call('ZREM', key, member)
        end
      else
        local sc = redis.call('ZSCORE', key, member)
        if sc and tonumber(sc) > now_us - w_us then
          res[i * 6] = tonumber(sc)
        else
          res[i * 6 - 1] = 1
        end
        redis.call('ZADD', key, string.format('%d', now_us), member)
        local over = redis.call('ZCARD', key) - burst - 1
        if over > 0 then redis.call('ZREMRANGEBYRANK', key, 0, over - 1) end
        redis.call('PEXPIRE', key, ttl_of(iv))
      end
      res[i * 6 - 3] = redis.call('ZCOUNT', key, string.format('(%d', now_us - w_us), '+inf')
    end
    res[i * 6 - 2] = 1
  end
end
return res
`)

// refreshScript extends the leases this host holds, on one slot: KEYS are
// the concurrency keys, ARGV lease_ms then one holder per key. A lease
// that is gone (expired, released, or Redis restarted empty) is not
// brought back: doing so could race with its release. Returns, per key,
// 1 when the lease was found (and extended), 0 when it was gone.
var refreshScript = newScript(`
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local real_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local found = {}
for i = 1, #KEYS do
  found[i] = 0
  if redis.call('ZSCORE', KEYS[i], ARGV[i + 1]) then
    redis.call('ZADD', KEYS[i], real_ms + lease, ARGV[i + 1])
    found[i] = 1
    redis.call('PEXPIRE', KEYS[i], lease * 2)
  end
end
return found
`)

// hotScript records keys worth naming in Hot: KEYS[1] is a sorted set of
// key names scored by when they were last noted (Unix ms), KEYS[2] a hash
// of their parameters; ARGV: the most to keep, then name, params, seen
// triples. The oldest names beyond the bound are dropped.
var hotScript = newScript(`
local keep = tonumber(ARGV[1])
for i = 2, #ARGV, 3 do
  redis.call('ZADD', KEYS[1], ARGV[i + 2], ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
local over = redis.call('ZCARD', KEYS[1]) - keep
if over > 0 then
  local old = redis.call('ZRANGE', KEYS[1], 0, over - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1)
  redis.call('HDEL', KEYS[2], unpack(old))
end
return over
`)
