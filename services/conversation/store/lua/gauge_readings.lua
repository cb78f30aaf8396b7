-- gauge_readings: every figure the conversation service's Prometheus gauges show, in one
-- call (GaugeUpdater reads it every few seconds, so it is the stack's idle cost).
-- KEYS[1]   the turns queue (sorted set)
-- KEYS[2]   the replies queue (sorted set)
-- KEYS[3]   the n8n outbox (sorted set)
-- KEYS[4]   the n8n dead letters (sorted set)
-- KEYS[5]   the failing work items (hash)
-- KEYS[6]   the dead work items (sorted set)
-- KEYS[7]   the conversations filed by bot state (sorted set, BOT_STATES)
-- KEYS[8]   the marker that BOT_STATES was filed (BOT_STATES_SINCE)
-- KEYS[9..] the event streams
-- ARGV[1]   the paused score (BOT_STATE_PAUSED)
-- ARGV[2]   the awaiting score (BOT_STATE_AWAITING)
-- Returns   {turns, replies, outbox, dead letters, failing, dead work, events (all
--           streams), filed (0/1), active, paused, awaiting, paused and awaiting}.
local events = 0
for i = 9, #KEYS do events = events + redis.call('XLEN', KEYS[i]) end
local p, a = tonumber(ARGV[1]), tonumber(ARGV[2])
return {
  redis.call('ZCARD', KEYS[1]),
  redis.call('ZCARD', KEYS[2]),
  redis.call('ZCARD', KEYS[3]),
  redis.call('ZCARD', KEYS[4]),
  redis.call('HLEN', KEYS[5]),
  redis.call('ZCARD', KEYS[6]),
  events,
  redis.call('EXISTS', KEYS[8]),
  redis.call('ZCOUNT', KEYS[7], 0, p - 1),
  redis.call('ZCOUNT', KEYS[7], p, p + a),
  redis.call('ZCOUNT', KEYS[7], a, a),
  redis.call('ZCOUNT', KEYS[7], p + a, p + a),
}
