-- ensure_conversation: the lead's conversation, opened if needed (a proactive start is a
-- message of it). A conversation it opens is started by the proactive `trigger`, and
-- counted so in the day's report; whose it is (vendedor, pipeline, stage) is recorded
-- for the reports either way.
-- KEYS[1]   the conversation (hash)
-- KEYS[2]   the lead's by-lead pointer
-- KEYS[3]   the contact's by-contact pointer
-- KEYS[4]   the day's report (reports.py; absent = not reported)
-- ARGV[1]   conversation id
-- ARGV[2]   now (ms)
-- ARGV[3]   lead id
-- ARGV[4]   contact id (0 = none)
-- ARGV[5]   R (ms)
-- ARGV[6]   the proactive trigger ('' = none)
-- ARGV[7]   the lead's responsible user, pipeline and stage (ARGV[7..9]; '' = unknown)
-- Returns   the conversation's hash (HGETALL: field, value...).
local opened = redis.call('HSETNX', KEYS[1], 'id', ARGV[1]) == 1
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[2])
redis.call('HSETNX', KEYS[1], 'bot_state', 'active')
redis.call('HSETNX', KEYS[1], 'lead_id', ARGV[3])
if ARGV[4] ~= '0' then
  redis.call('HSETNX', KEYS[1], 'contact_id', ARGV[4])
  if redis.call('SET', KEYS[3], ARGV[1], 'NX') then
    expire(KEYS[3], life(0, KEYS[1], tonumber(ARGV[5])))
  end
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
if redis.call('SET', KEYS[2], ARGV[1], 'NX') then
  expire(KEYS[2], life(0, KEYS[1], tonumber(ARGV[5])))
end
if ARGV[7] and ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'vendedor_id', ARGV[7], 'pipeline_id', ARGV[8], 'stage_id', ARGV[9])
end
if opened and ARGV[6] and ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'trigger', ARGV[6], 'reported_start', ARGV[2])
  report(KEYS[4] or '', KEYS[1], 'conversations_started', 1)
end
touch(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[5]))
recount(ARGV[1])
return redis.call('HGETALL', KEYS[1])
