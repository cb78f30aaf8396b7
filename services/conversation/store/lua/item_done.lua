-- item_done: a work item is done: off its queue, and kept (if it still exists) at most as
-- long as its conversation (named by the item's conversation_id).
-- KEYS[1]   the item (hash)
-- KEYS[2]   its due queue
-- ARGV[1]   the item's member in the queue
-- ARGV[2]   the item's own lifetime from now (ms; 0 = none)
-- ARGV[3]   R (ms)
-- ARGV[4..] field, value pairs set on the item
-- Returns   1 done, 0 the item is gone (only taken off the queue).
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
local conv = '@CONV@' .. (redis.call('HGET', KEYS[1], 'conversation_id') or '')
expire(KEYS[1], life(tonumber(ARGV[2]), conv, tonumber(ARGV[3])))
return 1
