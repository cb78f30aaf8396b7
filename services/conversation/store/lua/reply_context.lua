-- reply_context: what a reply from n8n is checked against, read in one call: the turn
-- its reply token answers, its conversation's record, and the job its idempotency key
-- already took, if any (begin_reply.lua checks the key again as it stores the job).
-- KEYS[1]   the reply token's turn (hash) when ARGV[1] is 'token', else the
--           conversation (hash)
-- KEYS[2]   the reply's idempotency key (→ job id)
-- ARGV[1]   'token' or 'conversation': what KEYS[1] is
-- Returns   {the turn as field, value, ... (empty without a token, or when the token is
--           unknown); the conversation id ('' when the token is unknown); the
--           conversation's record as field, value, ...; the job id or ''}.
local turn, conversation_id, record = {}, '', {}
if ARGV[1] == 'token' then
  turn = redis.call('HGETALL', KEYS[1])
  for i = 1, #turn, 2 do
    if turn[i] == 'conversation_id' then conversation_id = turn[i + 1] end
  end
  if conversation_id ~= '' then record = redis.call('HGETALL', '@CONV@' .. conversation_id) end
else
  record = redis.call('HGETALL', KEYS[1])
end
return {turn, conversation_id, record, redis.call('GET', KEYS[2]) or ''}
