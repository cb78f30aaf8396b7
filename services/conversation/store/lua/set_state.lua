-- set_state: the bot's state of a conversation (active, paused), logged; nothing is
-- written when the conversation is gone (erased or expired).
-- KEYS[1]   the conversation (hash)
-- KEYS[2]   its bot log
-- KEYS[3]   RESUMES_DUE
-- ARGV[1]   conversation id
-- ARGV[2]   the new state
-- ARGV[3]   by whom
-- ARGV[4]   why
-- ARGV[5]   when a pause ends (ms; 0 = never)
-- ARGV[6]   now (ms)
-- ARGV[7]   the log entry (JSON)
-- ARGV[8]   R (ms)
-- ARGV[9]   log entries kept
-- With a counter (the takeover, handoff or release it is), counted in the same call — in
-- the stats, the time series and the day's report — never twice for one change:
-- KEYS[4]   the stats hash
-- KEYS[5]   the current bucket of the time series
-- KEYS[6]   the day's report (reports.py)
-- ARGV[10]  the counter
-- ARGV[11]  'changed': counted only when the state changes; 'always': counted anyway
-- ARGV[12]  the bucket's lifetime (s)
-- Returns   the state it had before; nil when the conversation is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local previous = redis.call('HGET', KEYS[1], 'bot_state') or 'active'
if ARGV[2] == 'paused' then
  redis.call('HSET', KEYS[1], 'bot_state', ARGV[2], 'paused_by', ARGV[3],
    'paused_reason', ARGV[4], 'paused_at', ARGV[6], 'resumes_at', ARGV[5])
  if ARGV[5] ~= '0' then
    redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
  else
    redis.call('ZREM', KEYS[3], ARGV[1])
  end
else
  redis.call('HSET', KEYS[1], 'bot_state', ARGV[2])
  redis.call('HDEL', KEYS[1], 'paused_by', 'paused_reason', 'paused_at', 'resumes_at')
  redis.call('ZREM', KEYS[3], ARGV[1])
end
redis.call('RPUSH', KEYS[2], ARGV[7])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[9]), -1)
expire(KEYS[2], life(0, KEYS[1], tonumber(ARGV[8])))
recount(ARGV[1])
if ARGV[10] and ARGV[10] ~= '' and (ARGV[11] == 'always' or previous ~= ARGV[2]) then
  bump(KEYS[4], KEYS[5], tonumber(ARGV[12]), ARGV[10], 1)
  report(KEYS[6], KEYS[1], ARGV[10], 1)
end
return previous
