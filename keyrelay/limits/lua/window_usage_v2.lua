-- window_usage_v2: what one key's request windows, tpm window and in-flight set hold at `now`.
-- Read-only: it calls only HMGET, HGETALL and ZCOUNT, so reading never changes what an admission sees.
-- Expired buckets and reservations are skipped, not deleted (admit_v5 deletes them when it next runs).
-- Counts mirror admit_v5's window() and its in-flight check: a bucket counts while its index is one of
-- the last BUCKETS, the current one included; a reservation counts while its expiry is after `now`.
-- v2: the window hashes of admit_v5 (their running 'sum' while the oldest bucket 'lo' is live).
-- Bump the version in the file name on any change of behaviour.
--
-- KEYS: per request window its hash (bucket -> count, sum, lo); then the tpm hash if asked; then the in-flight zset.
-- ARGV: now (epoch seconds), windows, tpm (1 = count it, 0 = not), then per window: seconds.
-- Reply: {count of each window..., tokens in the tpm window (-1 = not asked), requests in flight}
local BUCKETS = 60
local now = tonumber(ARGV[1])
local nw = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])

local function used(key, seconds)
  local oldest = math.floor(now / (seconds / BUCKETS)) - BUCKETS + 1
  local got = redis.call('HMGET', key, 'sum', 'lo')
  local sum, lo = tonumber(got[1]), tonumber(got[2])
  if sum and (lo == nil or lo >= oldest) then
    return sum
  end
  local flat = redis.call('HGETALL', key)
  local total = 0
  for j = 1, #flat, 2 do
    local idx = tonumber(flat[j])  -- nil for 'sum' and 'lo'
    if idx and idx >= oldest then
      total = total + tonumber(flat[j + 1])
    end
  end
  return total
end

local reply = {}
for i = 1, nw do
  reply[i] = used(KEYS[i], tonumber(ARGV[3 + i]))
end
local k = nw + 1
if tpm == 1 then
  reply[nw + 1] = used(KEYS[k], 60)
  k = k + 1
else
  reply[nw + 1] = -1
end
-- admit_v5 counts in-flight slots whose expiry is after now (dropping the others when they would refuse): the same.
-- ARGV[1], not `now`, so the bound is the exact number the caller sent (Lua would print it with 14 digits).
reply[nw + 2] = redis.call('ZCOUNT', KEYS[k], '(' .. ARGV[1], '+inf')
return reply
