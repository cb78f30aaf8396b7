-- ingest: a batch of webhooks' events, each deduplicated then appended to its partition's
-- stream, in that order: a failure half-way leaves a possible duplicate (absorbed by the
-- applied-set of the worker), never a message marked seen but lost. One call for the
-- batch (the ack path); on a Cluster it would be one call per partition.
-- KEYS[1]   WEBHOOKS_LAST: when the last webhook came (Unix s)
-- KEYS[2]   WEBHOOKS_TOTAL: webhooks received
-- KEYS[3]   STATS: the counters (hash)
-- KEYS[4]   the current five-minute bucket of the series (hash)
-- KEYS[5..] the partition streams, partition 0 first
-- ARGV[1]   the dedupe markers' TTL (s)
-- ARGV[2]   now (Unix s)
-- ARGV[3]   webhooks in the batch
-- ARGV[4]   how many counters follow ARGV[5]
-- ARGV[5]   the bucket's TTL (s)
-- then      ARGV[4] pairs (counter, n): added to STATS and the bucket
-- then      per event: its dedupe key, the index into KEYS of its stream, the event (JSON)
-- Returns   per event, 1 when it was new (appended), 0 for a duplicate.
local out = {}
local first = 6 + 2 * tonumber(ARGV[4])
for i = 6, first - 1, 2 do
  redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[4], ARGV[i], ARGV[i + 1])
end
if first > 6 then redis.call('EXPIRE', KEYS[4], ARGV[5]) end
for i = first, #ARGV, 3 do
  if redis.call('EXISTS', ARGV[i]) == 0 then
    redis.call('XADD', KEYS[tonumber(ARGV[i + 1])], '*', 'e', ARGV[i + 2])
    redis.call('SET', ARGV[i], '1', 'EX', ARGV[1])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('INCRBY', KEYS[2], ARGV[3])
return out
