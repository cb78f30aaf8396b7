-- count: counters for the operator, in one call: each for the life of the data (the
-- stats hash, when asked) and in the current five-minute bucket of the time series
-- (series.py), whose lifetime is set when it is made.
-- KEYS[1]   the stats hash (conv:stats)
-- KEYS[2]   the current bucket (conv:series:<start>)
-- ARGV[1]   the bucket's lifetime (seconds)
-- ARGV[2]   '1' to add to the stats hash as well, '0' for the bucket only
-- ARGV[3..] field, increment, field, increment, ...
-- Returns   0.
local to_stats = ARGV[2] == '1'
for i = 3, #ARGV, 2 do
  local n = tonumber(ARGV[i + 1])
  if to_stats then redis.call('HINCRBY', KEYS[1], ARGV[i], n) end
  redis.call('HINCRBY', KEYS[2], ARGV[i], n)
end
if redis.call('TTL', KEYS[2]) < 0 then
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[1]))
end
return 0
