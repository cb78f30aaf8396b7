-- reply_finished: a reply is out (every part delivered, its note added or kept by the
-- gateway): the job is marked
-- noted and delivered and leaves its queue (as item_done.lua), the turn it answers is
-- settled (as finish_turn.lua), and it is counted — the reply's time only when it still
-- answers the turn in flight. One call where there were five.
-- KEYS[1]   the reply job (hash)
-- KEYS[2]   REPLIES_DUE
-- KEYS[3]   the conversation (hash)
-- KEYS[4]   its inbox
-- KEYS[5]   TURNS_DUE
-- KEYS[6]   HANDOFFS_DUE
-- KEYS[7]   the envelope's outbox item
-- KEYS[8]   the current bucket of the time series
-- ARGV[1]   the job's id (its member in REPLIES_DUE)
-- ARGV[2]   the job's own lifetime from now (ms)
-- ARGV[3]   R (ms)
-- ARGV[4]   the reply token answered ('' = none)
-- ARGV[5]   now (ms)
-- ARGV[6]   conversation id
-- ARGV[7]   the reply's time, as counters of the bucket (JSON object: name -> n; '{}' =
--           none), added only when the token is the turn's in flight
-- ARGV[8]   the bucket's lifetime (s)
-- With the reply's last message recorded in the same call (as reply_delivered.lua, when
-- nothing happens between its delivery and the reply's end):
-- KEYS[9]   the conversation's history
-- KEYS[10]  the stats hash
-- The last KEYS (KEYS[9] without the last message, KEYS[11] with it): the day's report
-- (reports.py).
-- ARGV[9]   its history entry (JSON; '' = recorded already)
-- ARGV[10]  history entries kept
-- ARGV[11]  parts of the reply sent
-- ARGV[12]  the counter of a recorded message ('' = none)
-- Returns   1.
local day = (#KEYS == 9 or #KEYS == 11) and KEYS[#KEYS] or ''
if #ARGV >= 9 and ARGV[9] ~= ''
    and redis.call('EXISTS', KEYS[3]) == 1 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'parts_sent', ARGV[11], 'last_part_at', ARGV[5], 'delivered', 1)
  push(KEYS[9], ARGV[9], tonumber(ARGV[10]), KEYS[3], tonumber(ARGV[3]))
  touch(ARGV[6], tonumber(ARGV[5]), tonumber(ARGV[3]))
  if ARGV[12] ~= '' then
    bump(KEYS[10], KEYS[8], tonumber(ARGV[8]), ARGV[12], 1)
    report(day, KEYS[3], ARGV[12], 1)
  end
end
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'noted', 1, 'state', 'delivered')
  local conv = '@CONV@' .. (redis.call('HGET', KEYS[1], 'conversation_id') or '')
  expire(KEYS[1], life(tonumber(ARGV[2]), conv, tonumber(ARGV[3])))
end
if ARGV[4] ~= '' and redis.call('HGET', KEYS[3], 'inflight_token') == ARGV[4] then
  for name, n in pairs(cjson.decode(ARGV[7])) do
    -- n8n's answer time is the reports' only (reports.py): not in the dashboard's series.
    if string.sub(name, 1, 4) ~= 'n8n:' then bump('', KEYS[8], tonumber(ARGV[8]), name, n) end
    report(day, KEYS[3], name, n)
  end
end
settle(KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], ARGV[4], ARGV[5], ARGV[6])
return 1
