-- clear_inflight: the turn in flight is settled without a reply (handed off).
-- KEYS[1]   the conversation (hash)
-- KEYS[2]   HANDOFFS_DUE
-- KEYS[3]   BOT_STATES
-- ARGV[1]   conversation id
-- Returns   1.
redis.call('HDEL', KEYS[1], 'inflight_token', 'inflight_event', 'inflight_since')
redis.call('ZREM', KEYS[2], ARGV[1])
recount(ARGV[1])
return 1
