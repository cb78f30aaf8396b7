-- claim_start: the first proactive start of a lead and trigger claims it (the dedupe
-- key), listed in the conversation's key index.
-- KEYS[1]   the lead's and trigger's dedupe key (conversation id, or id|scheduled ms)
-- KEYS[2]   the conversation (hash)
-- ARGV[1]   conversation id
-- ARGV[2]   the claim's TTL (ms)
-- ARGV[3]   R (ms)
-- ARGV[4]   now (ms)
-- Returns   1 claimed now; else what the existing claim holds ('' if it just expired).
local R, now = tonumber(ARGV[3]), tonumber(ARGV[4])
local ms = life(tonumber(ARGV[2]), KEYS[2], R)
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ms) then
  return redis.call('GET', KEYS[1]) or ''
end
own(KEYS[2], KEYS[1], ms, now, R)
return 1
