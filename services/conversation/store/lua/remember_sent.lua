-- remember_sent: the fingerprint of a text the bridge sent, to recognise its echo, while
-- the conversation exists.
-- KEYS[1]   the conversation's sent set
-- KEYS[2]   the conversation (hash)
-- ARGV[1]   the text's fingerprint
-- ARGV[2]   the set's own lifetime (ms)
-- ARGV[3]   R (ms)
-- Returns   1 remembered, 0 the conversation is gone.
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
expire(KEYS[1], life(tonumber(ARGV[2]), KEYS[2], tonumber(ARGV[3])))
return 1
