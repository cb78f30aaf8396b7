-- push_resume: a person wrote again: a paused conversation's quiet period starts over.
-- KEYS[1]   the conversation (hash)
-- KEYS[2]   RESUMES_DUE
-- ARGV[1]   conversation id
-- ARGV[2]   when it resumes (ms)
-- Returns   1 pushed, 0 the conversation is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'resumes_at', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
