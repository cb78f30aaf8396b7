-- The apply of a message, as a function: apply_message.lua runs it for a message read
-- from its partition's stream, ingest.lua for a customer's message it applies in the
-- same call as its ack (issue 22). Its KEYS and ARGV are those apply_message.lua names
-- in its header, and it returns what that script returns.
local function apply_message(KEYS, ARGV)
  if ARGV[16] ~= '' and redis.call('GET', KEYS[11]) ~= ARGV[16] then return 4 end
  local lead = redis.call('HGET', KEYS[1], 'lead_id')
  if ARGV[7] ~= '0' and lead and lead ~= '0' and lead ~= ARGV[7] then return -1 end
  local echo = ARGV[27] ~= '' and redis.call('SISMEMBER', KEYS[17], ARGV[27]) == 1
  local entry, counter = ARGV[4], ARGV[22]
  if echo then entry, counter = '', ARGV[28] end
  local function done(outcome)
    if ARGV[20] ~= '' then
      redis.call('XACK', KEYS[10], ARGV[20], ARGV[14])
      redis.call('XDEL', KEYS[10], ARGV[14])
      if ARGV[21] ~= '' then redis.call('HDEL', KEYS[15], ARGV[21]) end
    end
    if counter ~= '' and (outcome == 1 or outcome == 2) then
      bump(KEYS[13], KEYS[14], tonumber(ARGV[23]), counter, 1)
      report(KEYS[18] or '', KEYS[1], counter, 1)
    end
    if ARGV[27] ~= '' then return {outcome, echo and 1 or 0} end
    return outcome
  end
  if ARGV[14] ~= '' and #redis.call('XRANGE', KEYS[10], ARGV[14], ARGV[14]) == 0 then return done(3) end
  if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then return done(0) end
  local R = tonumber(ARGV[15])
  redis.call('HSETNX', KEYS[1], 'id', ARGV[1])
  redis.call('HSETNX', KEYS[1], 'created_at', ARGV[5])
  redis.call('HSETNX', KEYS[1], 'bot_state', 'active')
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[5])
  if ARGV[7] ~= '0' then
    redis.call('HSET', KEYS[1], 'lead_id', ARGV[7])
    point(KEYS[6], ARGV[1], KEYS[1], R)
  end
  if ARGV[8] ~= '0' then
    redis.call('HSET', KEYS[1], 'contact_id', ARGV[8])
    point(KEYS[8], ARGV[1], KEYS[1], R)
  end
  redis.call('ZADD', KEYS[7], ARGV[5], ARGV[1])
  local outcome = 1
  if ARGV[9] ~= '' then
    redis.call('HSET', KEYS[1], 'chat_id', ARGV[9])
    local owner = redis.call('GET', KEYS[9])
    if not owner then
      point(KEYS[9], ARGV[1], KEYS[1], R)
    elseif owner ~= ARGV[1] and redis.call('HSETNX', KEYS[1], 'shared_chat_with', owner) == 1 then
      outcome = 2
    end
  end
  if ARGV[10] ~= '0' then redis.call('HSET', KEYS[1], 'talk_id', ARGV[10]) end
  if entry ~= '' then
    push(KEYS[4], entry, tonumber(ARGV[12]), KEYS[1], R)
  end
  local claimed = false
  if ARGV[11] == '1' then
    push(KEYS[3], ARGV[3], tonumber(ARGV[17]), KEYS[1], R)
    local now = tonumber(ARGV[5])
    local held = redis.call('ZSCORE', KEYS[5], ARGV[1])
    if ARGV[24] ~= '0' and tonumber(ARGV[6]) <= now and (not held or tonumber(held) <= now)
        and redis.call('HGET', KEYS[1], 'bot_state') == 'active'
        and redis.call('HEXISTS', KEYS[1], 'inflight_token') == 0 then
      redis.call('ZINCRBY', KEYS[5], tonumber(ARGV[24]) - tonumber(held or '0'), ARGV[1])
      claimed = true
    else
      redis.call('ZADD', KEYS[5], ARGV[6], ARGV[1])
    end
  end
  if ARGV[18] ~= '0' and tonumber(ARGV[18]) > tonumber(redis.call('HGET', KEYS[1], 'customer_at') or '0') then
    redis.call('HSET', KEYS[1], 'customer_at', ARGV[18])
  end
  if ARGV[19] ~= '' then redis.call('HSET', KEYS[1], 'origin', ARGV[19]) end
  if ARGV[18] ~= '0' then
    local kept = redis.call('HGET', KEYS[1], 'kept_reply')
    if kept then
      local at = tonumber(ARGV[5])
      for job in string.gmatch(kept, '[^,]+') do
        redis.call('ZADD', KEYS[12], at, job)
        -- Half a second apart: each is claimed after the one before holds its lead's turn.
        at = at + 500
      end
      redis.call('HDEL', KEYS[1], 'kept_reply')
    end
  end
  touch(ARGV[1], tonumber(ARGV[5]), R)
  expire(KEYS[2], life(tonumber(ARGV[13]) * 1000, KEYS[1], R))
  recount(ARGV[1])
  local result = done(outcome)
  if not claimed then return result end
  local wanted = tonumber(ARGV[25])
  local history = {}
  if wanted > 0 then history = redis.call('LRANGE', KEYS[4], -wanted, -1) end
  local failing = redis.call('HEXISTS', KEYS[15], ARGV[26]) == 1
    or redis.call('ZSCORE', KEYS[16], ARGV[26]) ~= false
  return {outcome, redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[3], 0, -1), history,
    failing and 1 or 0}
end
