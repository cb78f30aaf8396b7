-- The start of a reply job, as a function: begin_reply.lua runs it, and take_reply.lua
-- after checking the reply in the same call (issue 22). Its KEYS and ARGV are those
-- begin_reply.lua names in its header, the job's fields given as a table (`fields`:
-- field, value, ...) instead of ARGV[3]; it returns what that script returns.
local function begin_reply(KEYS, ARGV, fields)
  local existing = redis.call('GET', KEYS[1])
  if existing then return existing end
  if redis.call('EXISTS', KEYS[4]) == 0 then return '' end
  local R, now = tonumber(ARGV[5]), tonumber(ARGV[6])
  touch(ARGV[7], now, R)
  local key_ms = life(tonumber(ARGV[2]) * 1000, KEYS[4], R)
  redis.call('SET', KEYS[1], ARGV[1], 'PX', key_ms)
  own(KEYS[4], KEYS[1], key_ms, now, R)
  redis.call('HSET', KEYS[2], unpack(fields))
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
end
