-- ingest: a batch of webhooks' events, each deduplicated then appended to its partition's
-- stream, in that order: a failure half-way leaves a possible duplicate (absorbed by the
-- applied-set of the worker), never a message marked seen but lost. One call for the
-- batch (the ack path); on a Cluster it would be one call per partition.
-- The echo of the bridge's own send (a message of a lead whose conversation remembers
-- sending that text, and already knows its chat) is recognised here: counted, marked
-- seen, and not stored — nothing else would come of applying it (issue 22). Any other
-- message goes through the stream, an echo the script cannot tell included.
-- KEYS[1]   WEBHOOKS_LAST: when the last webhook came (Unix s)
-- KEYS[2]   WEBHOOKS_TOTAL: webhooks received
-- KEYS[3]   STATS: the counters (hash)
-- KEYS[4]   the current five-minute bucket of the series (hash)
-- KEYS[5..] the partition streams, partition 0 first
-- ARGV[1]   the dedupe markers' TTL (s)
-- ARGV[2]   now (Unix s)
-- ARGV[3]   webhooks in the batch
-- ARGV[4]   how many counters follow ARGV[6]
-- ARGV[5]   the bucket's TTL (s)
-- ARGV[6]   the counter of a recognised echo
-- then      ARGV[4] pairs (counter, n): added to STATS and the bucket
-- then      per event: its dedupe key, the index into KEYS of its stream, the event
--           (JSON), its lead's conversation pointer ('' = no lead), the fingerprint of
--           its text ('' = not a possible echo). A stored event of a lead with a
--           conversation carries its id (field 'c'): the apply needs no lookup of its own.
-- Returns   per event, 1 when it was new (appended), 0 for a duplicate, 2 for the echo
--           of the bridge's own send (new, counted, not appended).
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
for i = first, #ARGV, 5 do
  if redis.call('EXISTS', ARGV[i]) == 1 then
    out[#out + 1] = 0
  else
    local id = ARGV[i + 3] ~= '' and redis.call('GET', ARGV[i + 3])
    if echo(id, ARGV[i + 4]) then
      redis.call('SET', ARGV[i], '1', 'EX', ARGV[1])
      redis.call('HINCRBY', KEYS[3], ARGV[6], 1)
      redis.call('HINCRBY', KEYS[4], ARGV[6], 1)
      bucketed = true
      out[#out + 1] = 2
    else
      if id then
        redis.call('XADD', KEYS[tonumber(ARGV[i + 1])], '*', 'e', ARGV[i + 2], 'c', id)
      else
        redis.call('XADD', KEYS[tonumber(ARGV[i + 1])], '*', 'e', ARGV[i + 2])
      end
      redis.call('SET', ARGV[i], '1', 'EX', ARGV[1])
      out[#out + 1] = 1
    end
  end
end
if bucketed then redis.call('EXPIRE', KEYS[4], ARGV[5]) end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('INCRBY', KEYS[2], ARGV[3])
return out
