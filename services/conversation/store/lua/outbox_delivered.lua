-- outbox_delivered: n8n took an envelope. It leaves the outbox queue and is kept while
-- its reply may still come (for a resend), n8n's "failing" flag is taken down (the
-- caller pulls the waiting envelopes forward when it was up), and the envelope is
-- counted as forwarded — one call for all of it.
-- KEYS[1]   the outbox item (hash)
-- KEYS[2]   the outbox queue (conv:outbox:due)
-- KEYS[3]   n8n's failing flag (conv:n8n:failing)
-- KEYS[4]   the stats hash (conv:stats)
-- KEYS[5]   the current five-minute bucket (conv:series:<start>)
-- ARGV[1]   the item's member in the queue (its event id)
-- ARGV[2]   the item's own lifetime from now (ms)
-- ARGV[3]   R (ms)
-- ARGV[4]   now (ms): delivered_at
-- ARGV[5]   the bucket's lifetime (seconds)
-- Returns   {1 done / 0 the item is gone, 1 n8n was failing / 0 not}.
redis.call('ZREM', KEYS[2], ARGV[1])
local was_failing = redis.call('DEL', KEYS[3])
redis.call('HINCRBY', KEYS[4], 'forwarded', 1)
redis.call('HINCRBY', KEYS[5], 'forwarded', 1)
if redis.call('TTL', KEYS[5]) < 0 then redis.call('EXPIRE', KEYS[5], tonumber(ARGV[5])) end
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, was_failing} end
redis.call('HSET', KEYS[1], 'delivered_at', ARGV[4], 'attempts', 0)
local conv = '@CONV@' .. (redis.call('HGET', KEYS[1], 'conversation_id') or '')
expire(KEYS[1], life(tonumber(ARGV[2]), conv, tonumber(ARGV[3])))
return {1, was_failing}
