-- admit_v5: check every limit of one request, then reserve; a refusal leaves no trace.
-- Mirrors keyrelay/limits/windows.py and keyrelay/limits/memory.py. Bump the version in the file
-- name on any change of behaviour. Replies are integers (Lua numbers are truncated by Redis).
-- v4 = v3 with its arguments in another order (the same keys, fields and replies): those that are the same for
-- every request of a key first and last, those of each request in the middle, so that the gateway packs the
-- command from two cached pieces and the request's own few values (keyrelay/limits/redis.py, _Layout).
-- v5 = v4 with each window hash also holding its running 'sum' and oldest bucket 'lo', so that a window is one HMGET
-- instead of reading its (up to 60) buckets on every request; the window hashes have new key names (<prefix>:window:,
-- was <prefix>:win:), since v4 would not keep 'sum' and 'lo'. Also: reservation expiries are whole seconds (integer
-- scores), expired in-flight slots are dropped only when the cap would refuse, a lifetime counter's zset is not
-- PERSISTed on each admission, numbers on the admitted path reach Redis as text (ARGV, or int() below), and each
-- window and spend level is written with one HSET of the figures read before (v4: HINCRBYs, one per field).
-- The same arguments and replies as v4.
--
-- KEYS (each a different key: a level's or window's figures are read once, then written):
--       per spend level: its hash (spent, reserved, r:<id>) and its zset (<id> -> expiry);
--       per request window: its hash (bucket -> count, sum, lo); then the tpm hash (the same) and the in-flight
--       zset if used;
--       then per state mark its string (the newest version of a key, account or group row; mark_v1.lua).
-- ARGV: levels, windows, tpm (0 = none), max_concurrent (0 = none), reservation ttl, marks,
--       then this request's: now, cost, max_tokens, reservation id, then per level: base, ttl (-1 = none),
--       then per level: cap, then per window: seconds, limit, then per mark: the version the gateway's cached row has.
-- Reply: {0, tpm_bucket, tightest_limit, remaining, reset_ms}            admitted
--        {1, level_index, micro-dollars left, 0, 0}                      spend level full
--        {2, window_index, limit, retry_ms, 0}                           request window full
--        {3, 0, tpm, retry_ms, 0}                                        token window full
--        {4, 0, max_concurrent, 1000, in_flight}                         too many in flight (v2: the count)
--        {5, mark_index, 0, 0, 0}                                        the cached row is stale (v3): reload
local BUCKETS = 60
-- A computed integer as Redis reads it: string.format('%d') is an integer print, where Lua's own conversion of a
-- number (any number passed to redis.call) prints it as a double ('%.14g', and 1e+14 for a hundred million dollars
-- in micro-dollars), several times slower. '%d' goes through a C long, 32 bits on some builds: larger figures are
-- printed as doubles without exponent.
local function int(x)
  if x < 2147483648 and x > -2147483649 then
    return string.format('%d', x)
  end
  return string.format('%.0f', x)
end
local nl = tonumber(ARGV[1])
local nw = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local max_conc = tonumber(ARGV[4])
local rttl = tonumber(ARGV[5])
local nm = tonumber(ARGV[6])
local now = tonumber(ARGV[7])
local cost = tonumber(ARGV[8])
local max_tokens = tonumber(ARGV[9])
local cost_s = ARGV[8]  -- as sent, for redis.call
local rid = ARGV[10]
local per_request = 10  -- ARGV[per_request + 2i - 1], ARGV[per_request + 2i]: level i's base and ttl
local a = per_request + 2 * nl + 1  -- the levels' caps, then the windows' seconds and limits
local k = 1

-- First of all, whether the gateway decides on current rows: a mark newer than the cached version means
-- the key, its account or its group changed after the gateway loaded them (revoked, disabled, limits changed).
local mk, ma = #KEYS - nm, #ARGV - nm
if nm > 0 then
  local newest = redis.call('MGET', unpack(KEYS, mk + 1, mk + nm))
  for i = 1, nm do
    if newest[i] and tonumber(newest[i]) > tonumber(ARGV[ma + i]) then
      return {5, i, 0, 0, 0}
    end
  end
end

local function ms(seconds)
  return math.ceil(seconds * 1000)
end

-- Sliding window over BUCKETS sub-buckets, kept in one hash: bucket index -> count, plus 'sum' (the count of every
-- bucket in the hash) and 'lo' (the oldest bucket's index; absent when there is none). While the oldest bucket is
-- live the window is one HMGET; once it expired (at most once per bucket width) the hash is read whole, its expired
-- buckets deleted and 'sum' and 'lo' written again (the whole hash deleted when no bucket is left).
-- Returns {key, width, cur, used, lo, seconds, the count in bucket cur (nil: none yet), cur as a field name}.
local function window(key, seconds)
  local width = seconds / BUCKETS
  local cur = math.floor(now / width)
  local cur_s = int(cur)
  local oldest = cur - BUCKETS + 1
  local got = redis.call('HMGET', key, 'sum', 'lo', cur_s)
  local sum, lo = tonumber(got[1]), tonumber(got[2])
  if sum and (lo == nil or lo >= oldest) then
    return {key, width, cur, sum, lo, seconds, tonumber(got[3]), cur_s}
  end
  local flat = redis.call('HGETALL', key)
  local used, gone, here = 0, {}, nil
  lo = nil
  for j = 1, #flat, 2 do
    local idx = tonumber(flat[j])
    if idx then  -- a bucket, not 'sum' or 'lo'
      if idx < oldest then
        gone[#gone + 1] = flat[j]
      else
        local count = tonumber(flat[j + 1])
        used = used + count
        if lo == nil or idx < lo then lo = idx end
        if idx == cur then here = count end
      end
    end
  end
  if lo then
    if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end  -- the buckets that left the window
    redis.call('HSET', key, 'sum', int(used), 'lo', int(lo))
  elseif #flat > 0 then
    redis.call('DEL', key)  -- no bucket is left in the window
  end
  return {key, width, cur, used, lo, seconds, here, cur_s}
end

-- How long until `weight` more would fit under `limit` in window `w`: its buckets expire oldest first (those up to
-- cur by index, then any ahead of cur, written by a gateway whose clock runs ahead), each freeing its count.
-- When one request too many must go (`excess` 1) and the window counts requests (each bucket at least 1), the
-- oldest bucket frees enough: 'lo' says when, without reading the hash.
local function retry(w, weight, limit, counts_requests)
  local width, cur, used, lo = w[2], w[3], w[4], w[5]
  local excess = used + weight - limit
  if lo == nil then return w[6] end
  if excess <= 1 and counts_requests then
    local r = (lo + BUCKETS) * width - now
    if r < 0 then r = 0 end
    return r
  end
  local flat = redis.call('HGETALL', w[1])
  local counts, ahead = {}, {}
  for j = 1, #flat, 2 do
    local idx = tonumber(flat[j])
    if idx then
      if idx > cur then
        ahead[#ahead + 1] = {idx, tonumber(flat[j + 1])}
      else
        counts[idx] = tonumber(flat[j + 1])
      end
    end
  end
  local freed = 0
  local function take(idx, cnt)
    freed = freed + cnt
    if freed >= excess then
      local r = (idx + BUCKETS) * width - now
      if r < 0 then r = 0 end
      return r
    end
    return nil
  end
  for idx = cur - BUCKETS + 1, cur do
    local cnt = counts[idx]
    if cnt then
      local r = take(idx, cnt)
      if r then return r end
    end
  end
  table.sort(ahead, function(x, y) return x[1] < y[1] end)
  for _, b in ipairs(ahead) do
    local r = take(b[1], b[2])
    if r then return r end
  end
  return w[6]
end

local levels = {}
for i = 1, nl do
  local h, z = KEYS[k], KEYS[k + 1]
  k = k + 2
  local cap = tonumber(ARGV[a])
  local base, ttl = ARGV[per_request + 2 * i - 1], tonumber(ARGV[per_request + 2 * i])
  a = a + 1
  local got = redis.call('HMGET', h, 'spent', 'reserved')
  local spent, reserved = tonumber(got[1]), tonumber(got[2] or '0')
  if not spent then  -- a new period's counter: it starts from the store's figure
    spent = tonumber(base)
    if got[2] then
      redis.call('HSET', h, 'spent', base)
    else
      redis.call('HSET', h, 'spent', base, 'reserved', 0)
    end
    if ttl >= 0 then redis.call('EXPIRE', h, ARGV[per_request + 2 * i]) end
  end
  if spent + reserved + cost > cap then
    -- Before refusing, release the reservations whose request never settled (its gateway process died): they
    -- only ever make the check stricter, so the common case, well under the cap, need not look for them.
    local stale = redis.call('ZRANGEBYSCORE', z, '-inf', ARGV[7], 'LIMIT', 0, 100)
    for _, id in ipairs(stale) do
      local amt = tonumber(redis.call('HGET', h, 'r:' .. id) or '0')
      redis.call('HINCRBY', h, 'reserved', int(0 - amt))  -- 0 - x, not -x: -0 would print as "-0", not an integer
      redis.call('HDEL', h, 'r:' .. id)
      redis.call('ZREM', z, id)
    end
    if #stale > 0 then
      reserved = tonumber(redis.call('HGET', h, 'reserved') or '0')
    end
    if spent + reserved + cost > cap then
      local left = cap - spent - reserved
      if left < 0 then left = 0 end
      return {1, i, left, 0, 0}
    end
  end
  levels[i] = {h, z, ttl, reserved}
end

local tight_limit, tight_rem, tight_reset = -1, -1, 0
local wins = {}
for i = 1, nw do
  local key = KEYS[k]
  k = k + 1
  local seconds, limit = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local w = window(key, seconds)
  local used = w[4]
  if used + 1 > limit then
    return {2, i, limit, ms(retry(w, 1, limit, true)), 0}
  end
  local rem = limit - used - 1
  if tight_rem < 0 or rem < tight_rem then
    tight_limit, tight_rem, tight_reset = limit, rem, retry(w, limit - used + 1, limit, true)
  end
  wins[i] = w
end

local tpm_w = nil
if tpm > 0 then
  tpm_w = window(KEYS[k], 60)
  k = k + 1
  if tpm_w[4] + max_tokens > tpm then
    return {3, 0, tpm, ms(retry(tpm_w, max_tokens, tpm, false)), 0}
  end
end

local conc_key = nil
if max_conc > 0 then
  conc_key = KEYS[k]
  k = k + 1
  local in_flight = redis.call('ZCARD', conc_key)
  if in_flight >= max_conc then
    -- As with spend: the slots of requests that never settled (their process died) are dropped only when they would
    -- make the difference, then the set is counted again.
    if redis.call('ZREMRANGEBYSCORE', conc_key, '-inf', ARGV[7]) > 0 then
      in_flight = redis.call('ZCARD', conc_key)
    end
    if in_flight >= max_conc then
      return {4, 0, max_conc, 1000, in_flight}
    end
  end
end

-- Every check passed: apply every change.
-- A reservation expires on a whole second (rounded up): a sorted set keeps integer scores as integers, while it
-- reads each fractional one back from its text at every insertion (v4: 3.4 µs per ZADD among 32 reservations).
local expiry = int(math.ceil(now + rttl))
for i = 1, nl do
  local h, z, ttl = levels[i][1], levels[i][2], levels[i][3]
  redis.call('HSET', h, 'reserved', int(levels[i][4] + cost), 'r:' .. rid, cost_s)  -- its reserved figure was read above
  redis.call('ZADD', z, expiry, rid)
  -- The zset lives as long as its counter: dead reservations are found in it only when a request would be
  -- refused, maybe after a long idle time, and must still be there to be released (an empty zset goes by itself).
  -- A lifetime counter's zset is made without an expiry, and nothing gives it one (v4 called PERSIST each time).
  if ttl >= 0 then
    redis.call('EXPIRE', z, int(math.max(rttl + 60, ttl)))
  end
end
-- One HSET per window, from the figures window() read: the bucket, 'sum', and 'lo' when the bucket is older than
-- every other (or the first). A window's hash must outlive its newest bucket by the window: set when a bucket is
-- new, since a later write to the same bucket would only move the expiry by less than the bucket's width.
local function add(w, amount, ttl)
  local key, here = w[1], w[7]
  if w[5] == nil or w[3] < w[5] then
    redis.call('HSET', key, w[8], int((here or 0) + amount), 'sum', int(w[4] + amount), 'lo', w[8])
  else
    redis.call('HSET', key, w[8], int((here or 0) + amount), 'sum', int(w[4] + amount))
  end
  if here == nil then
    redis.call('EXPIRE', key, ttl)
  end
end
for i = 1, nw do
  add(wins[i], 1, int(math.ceil(wins[i][6] + wins[i][6] / BUCKETS)))
end
local tpm_bucket = -1
if tpm_w then
  add(tpm_w, max_tokens, '62')
  tpm_bucket = tpm_w[3]
end
if conc_key then
  redis.call('ZADD', conc_key, expiry, rid)
  redis.call('EXPIRE', conc_key, int(rttl + 60))
end
return {0, tpm_bucket, tight_limit, tight_rem, ms(tight_reset)}
