-- begin_reply: a reply from n8n is a message of its conversation: its job is stored and
-- queued once per idempotency key.
-- KEYS[1]   the reply's idempotency key (→ job id)
-- KEYS[2]   the reply job (hash)
-- KEYS[3]   REPLIES_DUE
-- KEYS[4]   the conversation (hash)
-- KEYS[5]   its sent set (fingerprints of the bridge's own sends)
-- ARGV[1]   job id
-- ARGV[2]   the idempotency key's TTL (s)
-- ARGV[3]   the job's fields (JSON list: field, value, ...)
-- ARGV[4]   when the job is due (ms)
-- ARGV[5]   R (ms)
-- ARGV[6]   now (ms)
-- ARGV[7]   conversation id
-- ARGV[8]   the sent set's own lifetime (ms)
-- ARGV[9..] the fingerprints of the reply's parts, remembered now so that their echo is
--           recognised (remember_sent.lua, in the same call)
-- Returns   the existing job's id when the key was seen, '' when the conversation is
--           gone, nil when the job was stored.
local existing = redis.call('GET', KEYS[1])
if existing then return existing end
if redis.call('EXISTS', KEYS[4]) == 0 then return '' end
local R, now = tonumber(ARGV[5]), tonumber(ARGV[6])
touch(ARGV[7], now, R)
local key_ms = life(tonumber(ARGV[2]) * 1000, KEYS[4], R)
redis.call('SET', KEYS[1], ARGV[1], 'PX', key_ms)
own(KEYS[4], KEYS[1], key_ms, now, R)
redis.call('HSET', KEYS[2], unpack(cjson.decode(ARGV[3])))
local job_ms = life(0, KEYS[4], R)
expire(KEYS[2], job_ms)
own(KEYS[4], KEYS[2], job_ms, now, R)
if #ARGV >= 9 then
  redis.call('SADD', KEYS[5], unpack(ARGV, 9))
  expire(KEYS[5], life(tonumber(ARGV[8]), KEYS[4], R))
end
-- Leased to the caller, who delivers it now: queued as a lease is (ZINCRBY for a new
-- job), which wakes no reply pool.
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
else
  redis.call('ZINCRBY', KEYS[3], ARGV[4], ARGV[1])
end
return false
