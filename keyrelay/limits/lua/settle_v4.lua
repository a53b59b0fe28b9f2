-- settle_v4: replace one reservation by the actual cost and tokens, and append the request's usage record
-- to the usage stream in the same atomic step (v1 had no record).
-- v3: a replay (a settlement the gateway deferred after a failure) may say "held only": it charges only the levels
-- still holding its reservation, and adjusts the tpm window only if a level or its in-flight slot still held it,
-- so that a settlement Redis ran although its caller saw a failure (a reply lost to a timeout or a cut
-- connection) is not charged twice when replayed. The same keys and fields as v2.
-- v4: the tpm hash's running 'sum' (admit_v5.lua) moves with its bucket; the gateway sends the reserved cost, so a
-- level's reservation is released by one HDEL (v3 read it first: one call fewer per level); numbers reach Redis as
-- the text the gateway sent, or printed as integers.
-- KEYS: per spend level its hash and zset; then the tpm hash and the in-flight zset if used; then the usage
--       stream if a record is given.
-- ARGV: levels, reservation id, actual cost, reserved cost (what admit_v5 reserved at each level), tpm bucket
--       (-1 = none), reserved tokens, actual tokens, in-flight (1/0), held only (1/0), the usage record (JSON;
--       absent or "" = none).
-- An integer as Redis reads it, printed as an integer (as admit_v5.lua's int(): Lua's own print is a slower '%.14g').
local function int(x)
  if x < 2147483648 and x > -2147483649 then
    return string.format('%d', x)
  end
  return string.format('%.0f', x)
end

local nl = tonumber(ARGV[1])
local rid = ARGV[2]
local cost = tonumber(ARGV[3])
local reserved = tonumber(ARGV[4])
local tpm_bucket = tonumber(ARGV[5])
local reserved_tokens = tonumber(ARGV[6])
local tokens = tonumber(ARGV[7])
local conc = tonumber(ARGV[8])
local held_only = tonumber(ARGV[9]) == 1
local release = int(0 - reserved)  -- 0 - x, not -x: -0 would print as "-0", no integer
local held = false
local k = 1
for _ = 1, nl do
  local h, z = KEYS[k], KEYS[k + 1]
  k = k + 2
  local holds = redis.call('HDEL', h, 'r:' .. rid) == 1  -- this level still held the reservation
  if holds then
    held = true
    redis.call('HINCRBY', h, 'reserved', release)
    redis.call('ZREM', z, rid)
  end
  -- A counter whose period ended meanwhile is gone; the cost belongs to that period, not the next.
  -- (Its reservation was found: the counter is there.) Without its reservation, a first settlement charges a
  -- counter still there (its reservation was released as a dead one's); a replay that is "held only" does not.
  if cost > 0 and (holds or (not held_only and redis.call('EXISTS', h) == 1)) then
    redis.call('HINCRBY', h, 'spent', ARGV[3])
  end
end
local tpm_key, conc_key = nil, nil
if tpm_bucket >= 0 then
  tpm_key = KEYS[k]
  k = k + 1
end
if conc == 1 then
  conc_key = KEYS[k]
  k = k + 1
  if redis.call('ZREM', conc_key, rid) == 1 then held = true end  -- its in-flight slot also says it was held
end
-- Without a spend level or an in-flight slot to tell, a "held only" replay adjusts tpm as a first settlement does.
local delta = tokens - reserved_tokens
if tpm_key and delta ~= 0 and (held or not held_only or (nl == 0 and conc == 0))
    and redis.call('HEXISTS', tpm_key, ARGV[5]) == 1 then
  delta = int(delta)
  redis.call('HINCRBY', tpm_key, ARGV[5], delta)
  redis.call('HINCRBY', tpm_key, 'sum', delta)
end
if ARGV[10] and ARGV[10] ~= '' then
  redis.call('XADD', KEYS[k], '*', 'r', ARGV[10])
end
return 1
