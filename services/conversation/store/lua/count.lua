-- count: counters for the operator, in one call: each for the life of the data (the
-- stats hash, when asked) and in the current five-minute bucket of the time series
-- (series.py), whose lifetime is set when it is made.
-- KEYS[1]   the stats hash (conv:stats)
-- KEYS[2]   the current bucket (conv:series:<start>)
-- ARGV[1]   the bucket's lifetime (seconds)
-- ARGV[2]   '1' to add to the stats hash as well, '0' for the bucket only
-- ARGV[3..] field, increment, field, increment, ...
-- Returns   0.
local stats = ARGV[2] == '1' and KEYS[1] or ''
local ttl = tonumber(ARGV[1])
for i = 3, #ARGV, 2 do
  bump(stats, KEYS[2], ttl, ARGV[i], tonumber(ARGV[i + 1]))
end
return 0
