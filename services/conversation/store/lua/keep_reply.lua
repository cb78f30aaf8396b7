-- keep_reply: a reply that found WhatsApp's window closed waits for the customer: off the
-- due queue, named on its conversation beside any other kept there (`kept_reply`,
-- comma-separated job ids, in the order they were kept); the customer's next message puts
-- them all back (apply_message.lua), and the per-lead order of replies sends them in that
-- order. If the customer wrote meanwhile (customer_at moved past ARGV[2]), it is due again
-- now.
-- KEYS[1]   the reply job (hash)
-- KEYS[2]   REPLIES_DUE
-- KEYS[3]   the conversation (hash)
-- ARGV[1]   job id
-- ARGV[2]   the conversation's customer_at the caller saw ('0' = none)
-- ARGV[3]   now (ms)
-- Returns   1 kept, 2 due again now (the customer wrote), 0 the job or conversation is
--           gone (taken off the queue).
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if (redis.call('HGET', KEYS[3], 'customer_at') or '0') ~= ARGV[2] then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  return 2
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'waiting_for_customer')
local kept = redis.call('HGET', KEYS[3], 'kept_reply')
if not kept then
  redis.call('HSET', KEYS[3], 'kept_reply', ARGV[1])
elseif not string.find(',' .. kept .. ',', ',' .. ARGV[1] .. ',', 1, true) then
  redis.call('HSET', KEYS[3], 'kept_reply', kept .. ',' .. ARGV[1])
end
return 1
