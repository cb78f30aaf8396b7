-- apply_message: record a message in its conversation, once.
-- A conversation is its lead's: a message of another lead never joins it nor changes its
-- lead id (-1: the caller applies it to that lead's own conversation). A chat shared by
-- conversations keeps pointing at its first one; 2 says so the first time, for one
-- warning. An empty history entry (the echo of the bridge's own send) is applied but not
-- recorded. An event whose stream entry is gone was erased meanwhile (3): it must not
-- bring its conversation back. A replica that no longer holds the stream's lease applies
-- nothing (4): the new owner does, in order (a fencing check). Applying the same message
-- twice records it once (the applied set). A customer's message moves `customer_at`
-- forward, never back, and puts back the replies kept for it (keep_reply.lua).
-- With a consumer group (ARGV[20]) the stream entry is acknowledged and deleted here, its
-- failure record dropped, and the message counted (ARGV[22]) when it is recorded: the
-- event's whole bookkeeping in one call. Not for 4 (the new owner applies it) nor -1 (the
-- caller applies it to the lead's own conversation, which acknowledges it).
-- With a lease (ARGV[24]) the caller offers to run the turn at once: a customer's
-- message due now (no debounce) of an active conversation with no turn at n8n, whose
-- turn nobody holds, is claimed for it here (ZINCRBY: a lease, which wakes no pool) and
-- the script returns what the turn reads (as read_turn.lua): no claim, no read after.
-- KEYS[1]   the conversation (hash)
-- KEYS[2]   its applied set (message ids)
-- KEYS[3]   its inbox
-- KEYS[4]   its history
-- KEYS[5]   TURNS_DUE
-- KEYS[6]   the lead's by-lead pointer
-- KEYS[7]   CONVERSATIONS
-- KEYS[8]   the contact's by-contact pointer
-- KEYS[9]   the chat's by-chat pointer
-- KEYS[10]  the event's stream
-- KEYS[11]  that stream's owner lease
-- KEYS[12]  REPLIES_DUE
-- KEYS[13]  the stats hash
-- KEYS[14]  the current bucket of the time series
-- KEYS[15]  the work failures' hash (failing records)
-- KEYS[16]  the work failures' dead letters (sorted set)
-- KEYS[17]  the conversation's sent set (fingerprints of the bridge's own sends)
-- ARGV[1]   conversation id
-- ARGV[2]   message id
-- ARGV[3]   inbox entry (JSON)
-- ARGV[4]   history entry (JSON; '' = not recorded)
-- ARGV[5]   the message's time (ms)
-- ARGV[6]   when the turn is due (ms)
-- ARGV[7]   lead id (0 = none)
-- ARGV[8]   contact id (0 = none)
-- ARGV[9]   chat id ('' = none)
-- ARGV[10]  talk id (0 = none)
-- ARGV[11]  '1' when the message goes to the inbox (starts a turn)
-- ARGV[12]  history entries kept
-- ARGV[13]  the applied set's TTL (s)
-- ARGV[14]  the event's stream entry id ('' = not checked)
-- ARGV[15]  R (ms)
-- ARGV[16]  this replica's name ('' = lease not checked)
-- ARGV[17]  inbox entries kept
-- ARGV[18]  the customer's time of a customer's message (ms; 0 = not the customer's)
-- ARGV[19]  the chat's origin ('' = unchanged)
-- ARGV[20]  the stream's consumer group ('' = not acknowledged here)
-- ARGV[21]  the entry's id in the failure records ('' = none)
-- ARGV[22]  the counter of a recorded message ('' = none)
-- ARGV[23]  the bucket's lifetime (s)
-- ARGV[24]  the end of the lease of a turn claimed for the caller (ms; '0' = no offer)
-- ARGV[25]  history entries the turn reads (the newest)
-- ARGV[26]  the turn's id in the failure records
-- ARGV[27]  the text's fingerprint, to recognise the echo of the bridge's own send ('' =
--           not looked for: a customer's message)
-- ARGV[28]  the counter of such an echo (instead of ARGV[22]; its history entry, ARGV[4],
--           is then not recorded: the reply was, when Kommo took it)
-- Returns   1 applied, 0 a duplicate, 2 applied in a chat shared with another
--           conversation, -1 another lead's conversation, 3 erased, 4 not the owner;
--           when the turn was claimed for the caller, {outcome, the record as field,
--           value, ...; the inbox; the history; 1 when a failure of the turn is on record};
--           when an echo was looked for, {outcome, 1 if it is the bridge's own send}.
if ARGV[16] ~= '' and redis.call('GET', KEYS[11]) ~= ARGV[16] then return 4 end
local lead = redis.call('HGET', KEYS[1], 'lead_id')
if ARGV[7] ~= '0' and lead and lead ~= '0' and lead ~= ARGV[7] then return -1 end
local echo = ARGV[27] ~= '' and redis.call('SISMEMBER', KEYS[17], ARGV[27]) == 1
local entry, counter = ARGV[4], ARGV[22]
if echo then entry, counter = '', ARGV[28] end
local function done(outcome)
  if ARGV[20] ~= '' then
    redis.call('XACK', KEYS[10], ARGV[20], ARGV[14])
    redis.call('XDEL', KEYS[10], ARGV[14])
    if ARGV[21] ~= '' then redis.call('HDEL', KEYS[15], ARGV[21]) end
  end
  if counter ~= '' and (outcome == 1 or outcome == 2) then
    bump(KEYS[13], KEYS[14], tonumber(ARGV[23]), counter, 1)
  end
  if ARGV[27] ~= '' then return {outcome, echo and 1 or 0} end
  return outcome
end
if ARGV[14] ~= '' and #redis.call('XRANGE', KEYS[10], ARGV[14], ARGV[14]) == 0 then return done(3) end
if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then return done(0) end
redis.call('HSETNX', KEYS[1], 'id', ARGV[1])
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[5])
redis.call('HSETNX', KEYS[1], 'bot_state', 'active')
redis.call('HSET', KEYS[1], 'updated_at', ARGV[5])
if ARGV[7] ~= '0' then
  redis.call('HSET', KEYS[1], 'lead_id', ARGV[7])
  redis.call('SET', KEYS[6], ARGV[1])
end
if ARGV[8] ~= '0' then
  redis.call('HSET', KEYS[1], 'contact_id', ARGV[8])
  redis.call('SET', KEYS[8], ARGV[1])
end
redis.call('ZADD', KEYS[7], ARGV[5], ARGV[1])
local outcome = 1
if ARGV[9] ~= '' then
  redis.call('HSET', KEYS[1], 'chat_id', ARGV[9])
  local owner = redis.call('GET', KEYS[9])
  if not owner then
    redis.call('SET', KEYS[9], ARGV[1])
  elseif owner ~= ARGV[1] and redis.call('HSETNX', KEYS[1], 'shared_chat_with', owner) == 1 then
    outcome = 2
  end
end
if ARGV[10] ~= '0' then redis.call('HSET', KEYS[1], 'talk_id', ARGV[10]) end
if entry ~= '' then
  redis.call('RPUSH', KEYS[4], entry)
  redis.call('LTRIM', KEYS[4], -tonumber(ARGV[12]), -1)
end
local claimed = false
if ARGV[11] == '1' then
  redis.call('RPUSH', KEYS[3], ARGV[3])
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[17]), -1)
  local now = tonumber(ARGV[5])
  local held = redis.call('ZSCORE', KEYS[5], ARGV[1])
  if ARGV[24] ~= '0' and tonumber(ARGV[6]) <= now and (not held or tonumber(held) <= now)
      and redis.call('HGET', KEYS[1], 'bot_state') == 'active'
      and redis.call('HEXISTS', KEYS[1], 'inflight_token') == 0 then
    redis.call('ZINCRBY', KEYS[5], tonumber(ARGV[24]) - tonumber(held or '0'), ARGV[1])
    claimed = true
  else
    redis.call('ZADD', KEYS[5], ARGV[6], ARGV[1])
  end
end
if ARGV[18] ~= '0' and tonumber(ARGV[18]) > tonumber(redis.call('HGET', KEYS[1], 'customer_at') or '0') then
  redis.call('HSET', KEYS[1], 'customer_at', ARGV[18])
end
if ARGV[19] ~= '' then redis.call('HSET', KEYS[1], 'origin', ARGV[19]) end
if ARGV[18] ~= '0' then
  local kept = redis.call('HGET', KEYS[1], 'kept_reply')
  if kept then
    local at = tonumber(ARGV[5])
    for job in string.gmatch(kept, '[^,]+') do
      redis.call('ZADD', KEYS[12], at, job)
      -- Half a second apart: each is claimed after the one before holds its lead's turn.
      at = at + 500
    end
    redis.call('HDEL', KEYS[1], 'kept_reply')
  end
end
local R = tonumber(ARGV[15])
touch(ARGV[1], tonumber(ARGV[5]), R)
expire(KEYS[2], life(tonumber(ARGV[13]) * 1000, KEYS[1], R))
recount(ARGV[1])
local result = done(outcome)
if not claimed then return result end
local wanted = tonumber(ARGV[25])
local history = {}
if wanted > 0 then history = redis.call('LRANGE', KEYS[4], -wanted, -1) end
local failing = redis.call('HEXISTS', KEYS[15], ARGV[26]) == 1
  or redis.call('ZSCORE', KEYS[16], ARGV[26]) ~= false
return {outcome, redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[3], 0, -1), history,
  failing and 1 or 0}
