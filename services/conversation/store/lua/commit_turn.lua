-- commit_turn: a turn goes to n8n — its messages leave the inbox, its envelope joins the
-- outbox and its reply token is issued. Only for a conversation that still exists (an
-- erase may have come meanwhile), and only if the turn at n8n is still the one the
-- caller saw: two turns of one conversation built side by side never both go to n8n.
-- What the bot rules decided for the turn is recorded on the conversation and counted in
-- the same call, so a turn tried again is never counted twice.
-- KEYS[1]   the conversation's inbox
-- KEYS[2]   the conversation (hash)
-- KEYS[3]   the reply token (hash)
-- KEYS[4]   the envelope's outbox item (hash)
-- KEYS[5]   OUTBOX_DUE
-- KEYS[6]   TURNS_DUE
-- KEYS[7]   HANDOFFS_DUE
-- KEYS[8]   the stats hash
-- KEYS[9]   the current bucket of the time series
-- KEYS[10]  the day's report (reports.py; absent = not reported)
-- ARGV[1]   inbox messages the turn consumed
-- ARGV[2]   reply token
-- ARGV[3]   the envelope's event id
-- ARGV[4]   the envelope (JSON)
-- ARGV[5]   now (ms)
-- ARGV[6]   when the envelope is due (ms)
-- ARGV[7]   the claim's lease (the turn's score while claimed)
-- ARGV[8]   conversation id
-- ARGV[9]   the reply token's TTL (s)
-- ARGV[10]  n8n's URL
-- ARGV[11]  when n8n's silence hands the turn off (ms; 0 = never)
-- ARGV[12]  when the turn started (ms)
-- ARGV[13]  request id
-- ARGV[14]  R (ms)
-- ARGV[15]  the turn at n8n the caller saw ('' = none, '*' = any)
-- ARGV[16]  purpose: the template the answer becomes if the window is closed ('' = none)
-- ARGV[17]  fields set on the conversation (JSON object: the decision; '{}' = none)
-- ARGV[18]  counters to add (JSON object: name -> n; '{}' = none)
-- ARGV[19]  the bucket's lifetime (s)
-- ARGV[20]  '1' when the envelope is leased to the caller (ARGV[6] the lease's end): queued
--           with ZINCRBY, a lease taken, which wakes no work pool (due_queue.py)
-- Returns   1 committed, 0 not.
local n = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if redis.call('LLEN', KEYS[1]) < n then return 0 end
if ARGV[15] ~= '*' and (redis.call('HGET', KEYS[2], 'inflight_token') or '') ~= ARGV[15] then
  return 0
end
redis.call('LTRIM', KEYS[1], n, -1)
redis.call('HSET', KEYS[2], 'inflight_token', ARGV[2], 'inflight_event', ARGV[3],
  'inflight_since', ARGV[5])
redis.call('HSET', KEYS[3], 'conversation_id', ARGV[8], 'event_id', ARGV[3],
  'request_id', ARGV[13])
if ARGV[16] ~= '' then redis.call('HSET', KEYS[3], 'purpose', ARGV[16]) end
redis.call('HSET', KEYS[4], 'payload', ARGV[4], 'url', ARGV[10], 'attempts', 0,
  'created_at', ARGV[5], 'conversation_id', ARGV[8], 'request_id', ARGV[13])
local R, now = tonumber(ARGV[14]), tonumber(ARGV[5])
touch(ARGV[8], now, R)
local token_ms = life(tonumber(ARGV[9]) * 1000, KEYS[2], R)
expire(KEYS[3], token_ms)
own(KEYS[2], KEYS[3], token_ms, now, R)
local item_ms = life(0, KEYS[2], R)
expire(KEYS[4], item_ms)
own(KEYS[2], KEYS[4], item_ms, now, R)
if ARGV[20] == '1' and not redis.call('ZSCORE', KEYS[5], ARGV[3]) then
  redis.call('ZINCRBY', KEYS[5], ARGV[6], ARGV[3])
else
  redis.call('ZADD', KEYS[5], ARGV[6], ARGV[3])
end
if redis.call('ZSCORE', KEYS[6], ARGV[8]) == ARGV[7] then redis.call('ZREM', KEYS[6], ARGV[8]) end
redis.call('HSET', KEYS[2], 'turn_started', ARGV[12])
for field, value in pairs(cjson.decode(ARGV[17])) do
  redis.call('HSET', KEYS[2], field, tostring(value))
end
local day = KEYS[10] or ''
for name, n in pairs(cjson.decode(ARGV[18])) do
  bump(KEYS[8], KEYS[9], tonumber(ARGV[19]), name, n)
  report(day, KEYS[2], name, n)
end
-- A conversation's first turn starts it, for the reports (a proactive start is counted
-- when it opens the conversation: ensure_conversation.lua).
if redis.call('HSETNX', KEYS[2], 'reported_start', ARGV[5]) == 1 then
  report(day, KEYS[2], 'conversations_started', 1)
end
if ARGV[11] ~= '0' then
  -- A timer the committing process expects itself (WorkPool.expect): queued as a lease
  -- is (ZINCRBY when new), which wakes no pool of any replica.
  if redis.call('ZSCORE', KEYS[7], ARGV[8]) then
    redis.call('ZADD', KEYS[7], ARGV[11], ARGV[8])
  else
    redis.call('ZINCRBY', KEYS[7], ARGV[11], ARGV[8])
  end
end
recount(ARGV[8])
return 1
