-- bind_lead: a conversation that knew no lead (a chat bound to a contact) gets the lead
-- found through its contact: only while it still exists and still has none; the lead's
-- index points to it unless the lead already has a conversation of its own.
-- KEYS[1]   the conversation (hash)
-- KEYS[2]   the lead's by-lead pointer
-- ARGV[1]   conversation id
-- ARGV[2]   lead id
-- ARGV[3]   now (ms)
-- ARGV[4]   R (ms)
-- Returns   1 bound, 0 not (the conversation is gone or has a lead).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if (redis.call('HGET', KEYS[1], 'lead_id') or '0') ~= '0' then return 0 end
redis.call('HSET', KEYS[1], 'lead_id', ARGV[2])
if redis.call('SET', KEYS[2], ARGV[1], 'NX') then
  expire(KEYS[2], life(0, KEYS[1], tonumber(ARGV[4])))
end
touch(ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4]))
return 1
