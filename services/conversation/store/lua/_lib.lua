-- The library of the scripts that write a conversation's data: the loader
-- (store/scripts.py) puts it in front of every script that calls one of its functions,
-- and replaces its @NAME@ placeholders with the key names of store/keys.py (@CONV@
-- CONVERSATION_PREFIX, @INDEX@ CONVERSATIONS, @STATES@ BOT_STATES, @LEAD@/@CONTACT@/@CHAT@
-- the by-lead/by-contact/by-chat prefixes, @PAUSED@/@AWAITING@ the BOT_STATES scores).
-- R is the retention in ms (0 = kept until erased).
--   life(own_ms, conv, R): how long a key of conversation `conv` (its hash's key) may
--     live — its own lifetime (0 = none), never past R nor past the conversation itself;
--   expire(key, ms): PEXPIRE unless ms is 0 (no lifetime);
--   own(conv, key, ms, now, R): list `key` in the conversation's key index (expiring
--     at now + ms, or never), so that an erase finds it;
--   touch(id, now, R): a message — the conversation moves to `now` in CONVERSATIONS, and
--     its keys live R from now. Not re-expired on every message (issue 22: that was ~40
--     PEXPIREs a message): only once the conversation's hash has lived `refresh(R)` (a
--     day, or R/90 when R is shorter than 90 days) of its R, so they go between
--     R - refresh(R) and R after the last message, never later. A key made in between
--     gets its lifetime where it is made (`push`, `point`, `own`, `expire`);
--   push(list, value, max, conv, R): `value` at the end of one of the conversation's
--     lists, which keeps its last `max`; a list made now lives as long as `conv`;
--   point(key, id, conv, R): a by-lead/contact/chat pointer set to conversation `id`,
--     its lifetime kept; one made now lives as long as `conv`;
--   recount(id): the conversation is filed in BOT_STATES by what its hash says now (or
--     taken out, when it is gone): the last step of every script that creates one,
--     changes its bot state or its turn at n8n, or deletes it;
--   settle(conv, inbox, turns, handoffs, item, token, now, id): the reply `token` settles
--     the turn it answers (its envelope, the outbox `item` kept for a resend, goes), and
--     messages waiting in the inbox start the next turn (finish_turn.lua);
--   bump(stats, bucket, ttl, field, n): a counter for the operator, in the stats hash
--     (`stats` '' = the bucket only) and in the current five-minute bucket of the time
--     series (series.py), whose lifetime (`ttl` seconds) is set when it is made: the
--     count rides in the script that changes what it counts (no round trip of its own);
--   report(day, conv, field, n): the same counter in the day's report (reports.py; day
--     '' = none), under the vendedor, pipeline, stage, origin and proactive trigger the
--     conversation's hash `conv` holds ('-' where unknown). The day's hash lives
--     @REPORT_SECONDS@ s from its first count. A customer's message of a conversation
--     whose lead no turn has read yet waits on the conversation (`unreported`) and is
--     reported with the conversation's next count (its turn's, which knows the lead);
local function life(own_ms, conv, R)
  if R <= 0 then return own_ms end
  local ms = R
  if own_ms > 0 and own_ms < ms then ms = own_ms end
  local left = redis.call('PTTL', conv)
  if left > 0 and left < ms then ms = left end
  return ms
end
local function expire(key, ms)
  if ms > 0 then redis.call('PEXPIRE', key, ms) end
end
local function own(conv, key, ms, now, R)
  local index = conv .. ':keys'
  if ms > 0 then
    redis.call('ZADD', index, now + ms, key)
  else
    redis.call('ZADD', index, '+inf', key)
  end
  if R > 0 and redis.call('PTTL', index) < ms then redis.call('PEXPIRE', index, ms) end
end
local function touch(id, now, R)
  local c = '@CONV@' .. id
  redis.call('ZADD', '@INDEX@', now, id)
  if R <= 0 then return end
  local left = redis.call('PTTL', c)
  if left <= R and left > R - math.min(86400000, math.floor(R / 90)) then return end
  -- What the key index lists past its time is gone: dropped from it here, as often.
  redis.call('ZREMRANGEBYSCORE', c .. ':keys', '-inf', now)
  for _, k in ipairs({c, c .. ':inbox', c .. ':history', c .. ':bot-log', c .. ':keys'}) do
    redis.call('PEXPIRE', k, R)
  end
  local f = redis.call('HMGET', c, 'lead_id', 'contact_id', 'chat_id')
  if f[1] and f[1] ~= '0' then redis.call('PEXPIRE', '@LEAD@' .. f[1], R) end
  if f[2] and f[2] ~= '0' then redis.call('PEXPIRE', '@CONTACT@' .. f[2], R) end
  if f[3] and f[3] ~= '' and redis.call('GET', '@CHAT@' .. f[3]) == id then
    redis.call('PEXPIRE', '@CHAT@' .. f[3], R)
  end
end
local function push(list, value, max, conv, R)
  if redis.call('RPUSH', list, value) == 1 then
    if R > 0 then expire(list, life(0, conv, R)) end
  else
    redis.call('LTRIM', list, -max, -1)
  end
end
local function point(key, id, conv, R)
  if not redis.call('SET', key, id, 'KEEPTTL', 'GET') and R > 0 then
    expire(key, life(0, conv, R))
  end
end
local function recount(id)
  local c = '@CONV@' .. id
  if redis.call('EXISTS', c) == 0 then
    redis.call('ZREM', '@STATES@', id)
    return
  end
  local f = redis.call('HMGET', c, 'bot_state', 'inflight_token')
  local score = 0
  if f[1] == 'paused' then score = @PAUSED@ end
  if f[2] then score = score + @AWAITING@ end
  redis.call('ZADD', '@STATES@', score, id)
end
local function bump(stats, bucket, ttl, field, n)
  if stats ~= '' then redis.call('HINCRBY', stats, field, n) end
  -- A field new in the bucket may be the bucket's first: its lifetime is set then.
  if redis.call('HINCRBY', bucket, field, n) == n and redis.call('TTL', bucket) < 0 then
    redis.call('EXPIRE', bucket, ttl)
  end
end
local function tally(day, field, n)
  if redis.call('HINCRBY', day, field, n) == n and redis.call('TTL', day) < 0 then
    redis.call('EXPIRE', day, @REPORT_SECONDS@)
  end
end
local function report(day, conv, field, n)
  if day == '' or n == 0 then return end
  local f = redis.call('HMGET', conv, 'id', 'vendedor_id', 'pipeline_id', 'stage_id',
    'origin', 'trigger', 'unreported')
  if f[1] and not f[2] and field == 'messages_customer' then
    redis.call('HINCRBY', conv, 'unreported', n)
    return
  end
  local dims = '|' .. table.concat({f[2] or '-', f[3] or '-', f[4] or '-', f[5] or '-',
    f[6] or '-'}, '|')
  tally(day, field .. dims, n)
  if f[7] then
    tally(day, 'messages_customer' .. dims, tonumber(f[7]))
    redis.call('HDEL', conv, 'unreported')
  end
end
local function settle(conv, inbox, turns, handoffs, item, token, now, id)
  if redis.call('HGET', conv, 'inflight_token') == token then
    redis.call('HDEL', conv, 'inflight_token', 'inflight_event', 'inflight_since')
    redis.call('ZREM', handoffs, id)
    redis.call('DEL', item)
  end
  if redis.call('LLEN', inbox) > 0 then
    if redis.call('HEXISTS', conv, 'inflight_token') == 0
        and redis.call('HDEL', conv, 'turn_waiting') == 1 then
      redis.call('ZADD', turns, now, id)
    else
      redis.call('ZADD', turns, 'NX', now, id)
    end
  end
  recount(id)
end
