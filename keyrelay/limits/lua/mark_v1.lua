-- mark_v1: record that rows changed, so that every gateway's next admission sees it (admit_v5.lua).
-- A mark holds the newest version of one row (key, account or group) written through keyrelay's services;
-- it only grows, so two writers finishing out of order leave the higher version. Bump the version in the
-- file name on any change of behaviour.
--
-- KEYS: per row its mark string.
-- ARGV: ttl (seconds), then per row its version after the write.
-- Reply: 1
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  local version = tonumber(ARGV[1 + i])
  local current = tonumber(redis.call('GET', KEYS[i]) or '-1')
  if version > current then
    redis.call('SET', KEYS[i], version, 'EX', ttl)
  else
    redis.call('EXPIRE', KEYS[i], ttl)
  end
end
return 1
