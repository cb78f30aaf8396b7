-- defer_turn: a turn found the previous one still at n8n: it waits for that reply
-- (finish_turn then makes it due at once), at most until `later` (0 = no limit). Atomic
-- with finish_turn, so a reply settling in between is never missed: the turn is then due
-- now.
-- KEYS[1]   the conversation (hash)
-- KEYS[2]   TURNS_DUE
-- ARGV[1]   conversation id
-- ARGV[2]   later: when the turn is due anyway (ms; 0 = no limit)
-- ARGV[3]   now (ms)
-- Returns   1 waiting, 0 the turn at n8n was settled meanwhile (the turn is due now).
if redis.call('HEXISTS', KEYS[1], 'inflight_token') == 1 then
  redis.call('HSET', KEYS[1], 'turn_waiting', 1)
  if ARGV[2] ~= '0' then
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  else
    redis.call('ZREM', KEYS[2], ARGV[1])
  end
  return 1
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 0
