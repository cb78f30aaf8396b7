-- read_turn: what a turn reads before it decides, in one call: the conversation's
-- record, the messages waiting for it (its inbox) and its recent history.
-- KEYS[1]   the conversation (hash)
-- KEYS[2]   its inbox (list of JSON messages)
-- KEYS[3]   its history (list of JSON entries)
-- ARGV[1]   history entries wanted (the newest; 0 = none)
-- Returns   {the record as field, value, ...; the inbox; the history}.
local wanted = tonumber(ARGV[1])
local history = {}
if wanted > 0 then history = redis.call('LRANGE', KEYS[3], -wanted, -1) end
return {redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1), history}
