-- reply_failed: a reply Kommo refused for good (not worth trying again): off its queue,
-- marked failed with the error, kept (if it still exists) at most as long as its
-- conversation, and counted as a delivery failure of that conversation in the same call.
-- KEYS[1]   the reply job (hash)
-- KEYS[2]   REPLIES_DUE
-- KEYS[3]   the stats hash
-- KEYS[4]   the current bucket of the time series
-- KEYS[5]   the day's report (reports.py)
-- ARGV[1]   the job's id (its member in REPLIES_DUE)
-- ARGV[2]   R (ms)
-- ARGV[3]   the error
-- ARGV[4]   the bucket's lifetime (s)
-- Returns   1 failed now, 0 the job is gone or had failed already (only taken off the
--           queue; nothing counted).
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'state') == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'failed', 'error', ARGV[3])
local id = redis.call('HGET', KEYS[1], 'conversation_id') or ''
local conv = '@CONV@' .. id
expire(KEYS[1], life(0, conv, tonumber(ARGV[2])))
bump(KEYS[3], KEYS[4], tonumber(ARGV[4]), 'replies_failed', 1)
report(KEYS[5], conv, 'replies_failed', 1)
return 1
