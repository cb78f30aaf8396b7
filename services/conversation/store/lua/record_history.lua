-- record_history: a line in a conversation's history that no reply job carries (a
-- WhatsApp template the bridge sent), only while the conversation exists.
-- KEYS[1]   the conversation's history
-- KEYS[2]   the conversation (hash)
-- ARGV[1]   history entry (JSON)
-- ARGV[2]   history entries kept
-- ARGV[3]   conversation id
-- ARGV[4]   now (ms)
-- ARGV[5]   R (ms)
-- Returns   1 recorded, 0 the conversation is gone.
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
push(KEYS[1], ARGV[1], tonumber(ARGV[2]), KEYS[2], tonumber(ARGV[5]))
touch(ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
return 1
