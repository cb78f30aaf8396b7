-- outbox_failed: a failed attempt to give an envelope to n8n: retried later, or parked
-- as a dead letter. An item erased meanwhile is only taken off the queue.
-- KEYS[1]   the outbox item (hash)
-- KEYS[2]   OUTBOX_DUE
-- KEYS[3]   OUTBOX_DEAD
-- ARGV[1]   event id
-- ARGV[2]   the error
-- ARGV[3]   when it is due again (ms; '' = park it as a dead letter)
-- ARGV[4]   now (ms)
-- Returns   1 recorded, 0 the item is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'last_error', ARGV[2])
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
else
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
return 1
