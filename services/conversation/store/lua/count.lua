-- count: counters for the operator, in one call: each for the life of the data (the
-- stats hash, when asked) and in the current five-minute bucket of the time series
-- (series.py), whose lifetime is set when it is made.
-- KEYS[1]   the stats hash (conv:stats)
-- KEYS[2]   the current bucket (conv:series:<start>)
-- KEYS[3]   the conversation counted for (hash; absent = none)
-- KEYS[4]   the day's report (reports.py), with KEYS[3]
-- ARGV[1]   the bucket's lifetime (seconds)
-- ARGV[2]   '1' to add to the stats hash as well, '0' for the bucket only
-- ARGV[3..] field, increment, field, increment, ...
-- Returns   0.
local stats = ARGV[2] == '1' and KEYS[1] or ''
local ttl = tonumber(ARGV[1])
for i = 3, #ARGV, 2 do
  bump(stats, KEYS[2], ttl, ARGV[i], tonumber(ARGV[i + 1]))
  if KEYS[4] then report(KEYS[4], KEYS[3], ARGV[i], tonumber(ARGV[i + 1])) end
end
return 0
