-- take_reply: a reply from n8n checked and its job started in one call (issue 22), when
-- the caller knows the messages it goes as without the conversation (one message no
-- rule can split, a template, a handoff without text): what reply_context.lua reads,
-- the checks the caller would make on it, then begin_reply (_reply.lua). The job's
-- fields that come from the conversation and its turn are filled in here.
-- KEYS[1]   the reply token's turn (hash) when ARGV[1] is 'token', else the
--           conversation (hash)
-- KEYS[2]   the reply's idempotency key (→ job id)
-- KEYS[3]   the reply job (hash)
-- KEYS[4]   REPLIES_DUE
-- ARGV[1]   'token' or 'conversation': what KEYS[1] is
-- ARGV[2]   job id
-- ARGV[3]   the idempotency key's TTL (s)
-- ARGV[4]   the job's fields (JSON list: field, value, ...) but conversation_id,
--           lead_id, chat_id, event_id and closed_window_purpose
-- ARGV[5]   when the job is due (ms: the caller's lease)
-- ARGV[6]   R (ms)
-- ARGV[7]   now (ms)
-- ARGV[8]   the conversation id when ARGV[1] is 'conversation'
-- ARGV[9]   the sent set's own lifetime (ms)
-- ARGV[10]  what goes when WhatsApp's window is closed ('' = the turn's purpose)
-- ARGV[11..] the fingerprints of the reply's parts (as begin_reply's ARGV[9..])
-- Returns   {outcome, the conversation id, its record as field, value, ..., the turn as
--           field, value, ..., the job id of a duplicate or ''}, outcome one of
--           'unknown_token', 'gone' (no conversation), 'duplicate' (the key was seen),
--           'paused' (the bot is not active), 'no_address' (no lead, no chat), 'begun'.
local turn, id = {}, ARGV[8]
if ARGV[1] == 'token' then
  turn = redis.call('HGETALL', KEYS[1])
  id = ''
  for i = 1, #turn, 2 do
    if turn[i] == 'conversation_id' then id = turn[i + 1] end
  end
  if #turn == 0 then return {'unknown_token', '', {}, {}, ''} end
end
local conv = '@CONV@' .. id
local record = id ~= '' and redis.call('HGETALL', conv) or {}
if #record == 0 then return {'gone', id, {}, turn, ''} end
local seen = redis.call('GET', KEYS[2])
if seen then return {'duplicate', id, record, turn, seen} end
local function field(hash, name)
  for i = 1, #hash, 2 do
    if hash[i] == name then return hash[i + 1] end
  end
  return nil
end
local state = field(record, 'bot_state') or 'active'
if state ~= 'active' then return {'paused', id, record, turn, ''} end
local lead = field(record, 'lead_id') or ''
if lead == '' then lead = '0' end
local chat = field(record, 'chat_id') or ''
if lead == '0' and chat == '' then return {'no_address', id, record, turn, ''} end
local fields = cjson.decode(ARGV[4])
local purpose = ARGV[10]
if purpose == '' then purpose = field(turn, 'purpose') or '' end
for _, pair in ipairs({{'conversation_id', id}, {'lead_id', lead}, {'chat_id', chat},
    {'event_id', field(turn, 'event_id') or ''}, {'closed_window_purpose', purpose}}) do
  fields[#fields + 1] = pair[1]
  fields[#fields + 1] = pair[2]
end
local A = {ARGV[2], ARGV[3], '', ARGV[5], ARGV[6], ARGV[7], id, ARGV[9]}
for i = 11, #ARGV do A[#A + 1] = ARGV[i] end
begin_reply({KEYS[2], KEYS[3], KEYS[4], conv, conv .. ':sent'}, A, fields)
return {'begun', id, record, turn, ''}
