-- admit_v4: check every limit of one request, then reserve; a refusal leaves no trace.
-- Mirrors keyrelay/limits/windows.py and keyrelay/limits/memory.py. Bump the version in the file
-- name on any change of behaviour. Replies are integers (Lua numbers are truncated by Redis).
-- v4 = v3 with its arguments in another order (the same keys, fields and replies): those that are the same for
-- every request of a key first and last, those of each request in the middle, so that the gateway packs the
-- command from two cached pieces and the request's own few values (keyrelay/limits/redis.py, _Layout).
--
-- KEYS: per spend level: its hash (spent, reserved, r:<id>) and its zset (<id> -> expiry);
--       per request window: its hash (bucket -> count); then the tpm hash and the in-flight zset if used;
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
local nl = tonumber(ARGV[1])
local nw = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local max_conc = tonumber(ARGV[4])
local rttl = tonumber(ARGV[5])
local nm = tonumber(ARGV[6])
local now = tonumber(ARGV[7])
local cost = tonumber(ARGV[8])
local max_tokens = tonumber(ARGV[9])
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

-- Sliding window over BUCKETS sub-buckets: drop expired buckets, count the rest, and say how long
-- until `weight` more would fit under `limit`.
local function window(key, seconds, limit)
  local width = seconds / BUCKETS
  local cur = math.floor(now / width)
  local oldest = cur - BUCKETS + 1
  local flat = redis.call('HGETALL', key)
  local used = 0
  local counts = {}  -- bucket index -> count, of the live buckets up to cur
  local ahead = {}  -- buckets after cur (a gateway whose clock runs ahead wrote them): {index, count}
  for j = 1, #flat, 2 do
    local idx = tonumber(flat[j])
    local cnt = tonumber(flat[j + 1])
    if idx < oldest then
      redis.call('HDEL', key, flat[j])
    else
      used = used + cnt
      if idx > cur then
        ahead[#ahead + 1] = {idx, cnt}
      else
        counts[idx] = cnt
      end
    end
  end
  -- The live buckets oldest first: those up to cur by index (at most BUCKETS, no sort), then any ahead, sorted.
  local function retry(weight)
    local excess = used + weight - limit
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
    for idx = oldest, cur do
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
    return seconds
  end
  return cur, used, retry
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
    if ttl >= 0 then redis.call('EXPIRE', h, ttl) end
  end
  if spent + reserved + cost > cap then
    -- Before refusing, release the reservations whose request never settled (its gateway process died): they
    -- only ever make the check stricter, so the common case, well under the cap, need not look for them.
    local stale = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 100)
    for _, id in ipairs(stale) do
      local amt = tonumber(redis.call('HGET', h, 'r:' .. id) or '0')
      redis.call('HINCRBY', h, 'reserved', 0 - amt)  -- 0 - x, not -x: Lua's -0 reaches Redis as "-0", not an integer
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
  levels[i] = {h, z, ttl}
end

local tight_limit, tight_rem, tight_reset = -1, -1, 0
local wins = {}
for i = 1, nw do
  local key = KEYS[k]
  k = k + 1
  local seconds, limit = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local cur, used, retry = window(key, seconds, limit)
  if used + 1 > limit then
    return {2, i, limit, ms(retry(1)), 0}
  end
  local rem = limit - used - 1
  if tight_rem < 0 or rem < tight_rem then
    tight_limit, tight_rem, tight_reset = limit, rem, retry(limit - used + 1)
  end
  wins[i] = {key, cur, seconds}
end

local tpm_key, tpm_bucket = nil, -1
if tpm > 0 then
  tpm_key = KEYS[k]
  k = k + 1
  local cur, used, retry = window(tpm_key, 60, tpm)
  if used + max_tokens > tpm then
    return {3, 0, tpm, ms(retry(max_tokens)), 0}
  end
  tpm_bucket = cur
end

local conc_key = nil
if max_conc > 0 then
  conc_key = KEYS[k]
  k = k + 1
  redis.call('ZREMRANGEBYSCORE', conc_key, '-inf', now)
  local in_flight = redis.call('ZCARD', conc_key)
  if in_flight >= max_conc then
    return {4, 0, max_conc, 1000, in_flight}
  end
end

-- Every check passed: apply every change.
for i = 1, nl do
  local h, z, ttl = levels[i][1], levels[i][2], levels[i][3]
  redis.call('HINCRBY', h, 'reserved', cost)
  redis.call('HSET', h, 'r:' .. rid, cost)
  redis.call('ZADD', z, now + rttl, rid)
  -- The zset lives as long as its counter: dead reservations are found in it only when a request would be
  -- refused, maybe after a long idle time, and must still be there to be released (an empty zset goes by itself).
  if ttl < 0 then
    redis.call('PERSIST', z)
  else
    redis.call('EXPIRE', z, math.max(rttl + 60, ttl))
  end
end
-- A window's hash must outlive its newest bucket by the window: set when a bucket is new (its count is then the
-- increment), since a later write to the same bucket would only move the expiry by less than the bucket's width.
for i = 1, nw do
  local key, cur, seconds = wins[i][1], wins[i][2], wins[i][3]
  if redis.call('HINCRBY', key, cur, 1) == 1 then
    redis.call('EXPIRE', key, math.ceil(seconds + seconds / BUCKETS))
  end
end
if tpm_key then
  if redis.call('HINCRBY', tpm_key, tpm_bucket, max_tokens) == max_tokens then
    redis.call('EXPIRE', tpm_key, 62)
  end
end
if conc_key then
  redis.call('ZADD', conc_key, now + rttl, rid)
  redis.call('EXPIRE', conc_key, rttl + 60)
end
return {0, tpm_bucket, tight_limit, tight_rem, ms(tight_reset)}
