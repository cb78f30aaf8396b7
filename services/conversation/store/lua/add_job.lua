-- add_job: a job of a conversation (a note or task for Kommo, a proactive start), queued
-- and listed in the conversation's key index, only while the conversation exists.
-- KEYS[1]   the job (hash)
-- KEYS[2]   its due queue
-- KEYS[3]   the conversation (hash)
-- ARGV[1]   job id
-- ARGV[2]   when it is due (ms)
-- ARGV[3]   the job's own lifetime (ms)
-- ARGV[4]   now (ms)
-- ARGV[5]   R (ms)
-- ARGV[6..] the job's field, value pairs
-- Returns   1 queued, 0 the conversation is gone.
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
local R, now = tonumber(ARGV[5]), tonumber(ARGV[4])
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
local ms = life(tonumber(ARGV[3]), KEYS[3], R)
expire(KEYS[1], ms)
own(KEYS[3], KEYS[1], ms, now, R)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
