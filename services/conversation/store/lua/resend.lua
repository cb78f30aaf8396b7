-- resend: an envelope n8n has taken (delivered_at) goes again, unless it is queued
-- already.
-- KEYS[1]   the outbox item (hash)
-- KEYS[2]   OUTBOX_DUE
-- ARGV[1]   event id
-- ARGV[2]   now (ms)
-- Returns   1 queued again, 0 not (gone, never delivered, or on its way).
if redis.call('HEXISTS', KEYS[1], 'delivered_at') == 0 then return 0 end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('HDEL', KEYS[1], 'delivered_at')
redis.call('HINCRBY', KEYS[1], 'resends', 1)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
