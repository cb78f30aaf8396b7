-- finish_turn: a reply settles the turn it answers (and its envelope, kept for a resend,
-- can go); pending messages then start the next one.
-- KEYS[1]   the conversation (hash)
-- KEYS[2]   its inbox
-- KEYS[3]   TURNS_DUE
-- KEYS[4]   HANDOFFS_DUE
-- KEYS[5]   the envelope's outbox item
-- ARGV[1]   the reply token answered
-- ARGV[2]   now (ms)
-- ARGV[3]   conversation id
-- Returns   1.
if redis.call('HGET', KEYS[1], 'inflight_token') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'inflight_token', 'inflight_event', 'inflight_since')
  redis.call('ZREM', KEYS[4], ARGV[3])
  redis.call('DEL', KEYS[5])
end
if redis.call('LLEN', KEYS[2]) > 0 then
  if redis.call('HEXISTS', KEYS[1], 'inflight_token') == 0
      and redis.call('HDEL', KEYS[1], 'turn_waiting') == 1 then
    redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
  else
    redis.call('ZADD', KEYS[3], 'NX', ARGV[2], ARGV[3])
  end
end
recount(ARGV[3])
return 1
