-- ingest: a batch of webhooks' events, each deduplicated then appended to its partition's
-- stream, in that order: a failure half-way leaves a possible duplicate (absorbed by the
-- applied-set of the worker), never a message marked seen but lost. One call for the
-- batch (the ack path); on a Cluster it would be one call per partition.
-- The echo of the bridge's own send (a message of a lead whose conversation remembers
-- sending that text, and already knows its chat) is recognised here: counted, marked
-- seen, and not stored — nothing else would come of applying it (issue 22). Any other
-- message goes through the stream, an echo the script cannot tell included.
-- A customer's message of a lead with a conversation may come with the arguments of its
-- apply (apply_message.lua's ARGV, the conversation id and the turn's failure id left
-- '' for this script to fill in, the inbox entry a JSON object without its closing
-- brace, to which its "seq" is added): when its partition's stream holds nothing (no
-- event of that partition waits, so none of its conversation can be older), it is
-- applied here, in the same call as its ack — no stream entry, no read, no apply call
-- of its own (issue 22). Its "seq" is then made of Redis' clock, as a stream id is. An
-- apply that finds the conversation another lead's goes through the stream instead.
-- KEYS[1]   WEBHOOKS_LAST: when the last webhook came (Unix s)
-- KEYS[2]   WEBHOOKS_TOTAL: webhooks received
-- KEYS[3]   STATS: the counters (hash)
-- KEYS[4]   the current five-minute bucket of the series (hash)
-- KEYS[5]   TURNS_DUE
-- KEYS[6]   REPLIES_DUE
-- KEYS[7]   the work failures' hash (failing records)
-- KEYS[8]   the work failures' dead letters (sorted set)
-- KEYS[9]   the day's report (reports.py)
-- KEYS[10..] the partition streams, partition 0 first
-- ARGV[1]   the dedupe markers' TTL (s)
-- ARGV[2]   now (Unix s)
-- ARGV[3]   webhooks in the batch
-- ARGV[4]   how many counters follow ARGV[6]
-- ARGV[5]   the bucket's TTL (s)
-- ARGV[6]   the counter of a recognised echo
-- then      ARGV[4] pairs (counter, n): added to STATS and the bucket
-- then      per event: its dedupe key, the index into KEYS of its stream, the event
--           (JSON), its lead's conversation pointer ('' = no lead), the fingerprint of
--           its text ('' = not a possible echo), n, then n arguments of its apply (0 =
--           not applied here). A stored event of a lead with a conversation carries its
--           id (field 'c'): the apply needs no lookup of its own.
-- Returns   per event, 1 when it was new (appended), 0 for a duplicate, 2 for the echo
--           of the bridge's own send (new, counted, not appended), or {3, the
--           conversation, what the apply returned} when it was applied here.
local out = {}
local first = 7 + 2 * tonumber(ARGV[4])
local bucketed = first > 7
for i = 7, first - 1, 2 do
  redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[4], ARGV[i], ARGV[i + 1])
end
local function echo(id, fingerprint)
  if fingerprint == '' or not id then return false end
  local chat = redis.call('HGET', '@CONV@' .. id, 'chat_id')
  return chat and chat ~= ''
    and redis.call('SISMEMBER', '@CONV@' .. id .. ':sent', fingerprint) == 1
end
local clock = nil
local applied_here = 0
-- The apply of the message whose arguments start at ARGV[at] (n of them), to conversation
-- `id`: what apply_message returned, or nil when it must go through the stream.
local function apply_here(id, stream, at, n)
  if redis.call('XLEN', stream) > 0 then return nil end
  local A = {}
  for j = 1, n do A[j] = ARGV[at + j - 1] end
  if not clock then
    local t = redis.call('TIME')
    clock = t[1] * 1000 + math.floor(t[2] / 1000)
  end
  A[1] = id
  A[3] = A[3] .. ',"seq":"' .. clock .. '-' .. applied_here .. '"}'
  A[26] = 'turn:' .. id
  local c = '@CONV@' .. id
  local K = {c, c .. ':applied', c .. ':inbox', c .. ':history', KEYS[5], '@LEAD@' .. A[7],
    '@INDEX@', '@CONTACT@' .. A[8], '@CHAT@' .. A[9], stream, stream .. ':owner', KEYS[6],
    KEYS[3], KEYS[4], KEYS[7], KEYS[8], c .. ':sent', KEYS[9]}
  local result = apply_message(K, A)
  if result == -1 then return nil end
  applied_here = applied_here + 1
  return result
end
local i = first
while i <= #ARGV do
  local n = tonumber(ARGV[i + 5])
  local stream = KEYS[tonumber(ARGV[i + 1])]
  if redis.call('EXISTS', ARGV[i]) == 1 then
    out[#out + 1] = 0
  else
    local id = ARGV[i + 3] ~= '' and redis.call('GET', ARGV[i + 3])
    local here = nil
    if echo(id, ARGV[i + 4]) then
      redis.call('HINCRBY', KEYS[3], ARGV[6], 1)
      redis.call('HINCRBY', KEYS[4], ARGV[6], 1)
      bucketed = true
      out[#out + 1] = 2
    else
      if id and n > 0 then here = apply_here(id, stream, i + 6, n) end
      if here ~= nil then
        out[#out + 1] = {3, id, here}
      elseif id then
        redis.call('XADD', stream, '*', 'e', ARGV[i + 2], 'c', id)
        out[#out + 1] = 1
      else
        redis.call('XADD', stream, '*', 'e', ARGV[i + 2])
        out[#out + 1] = 1
      end
    end
    redis.call('SET', ARGV[i], '1', 'EX', ARGV[1])
  end
  i = i + 6 + n
end
if bucketed then redis.call('EXPIRE', KEYS[4], ARGV[5]) end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('INCRBY', KEYS[2], ARGV[3])
return out
