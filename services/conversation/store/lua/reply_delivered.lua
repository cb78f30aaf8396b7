-- reply_delivered: Kommo took (a part of) the bot's reply: a message of its
-- conversation, into the history with the job marked, unless the conversation was erased
-- meanwhile.
-- KEYS[1]   the reply job (hash)
-- KEYS[2]   the conversation's history
-- KEYS[3]   the conversation (hash)
-- KEYS[4]   the stats hash
-- KEYS[5]   the current bucket of the time series
-- KEYS[6]   the day's report (reports.py; absent = not reported)
-- ARGV[1]   history entry (JSON)
-- ARGV[2]   history entries kept
-- ARGV[3]   conversation id
-- ARGV[4]   now (ms)
-- ARGV[5]   R (ms)
-- ARGV[6]   parts of the reply sent so far
-- ARGV[7]   '1' when the whole reply is out
-- ARGV[8]   the counter of a recorded message ('' = none)
-- ARGV[9]   the bucket's lifetime (s)
-- Returns   1 recorded, 0 not (the job or the conversation is gone).
if redis.call('EXISTS', KEYS[3]) == 0 or redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'parts_sent', ARGV[6], 'last_part_at', ARGV[4])
if ARGV[7] == '1' then redis.call('HSET', KEYS[1], 'delivered', 1) end
push(KEYS[2], ARGV[1], tonumber(ARGV[2]), KEYS[3], tonumber(ARGV[5]))
touch(ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
if ARGV[8] ~= '' then
  bump(KEYS[4], KEYS[5], tonumber(ARGV[9]), ARGV[8], 1)
  report(KEYS[6] or '', KEYS[3], ARGV[8], 1)
end
return 1
