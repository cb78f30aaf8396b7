-- put_rules: a new version of the bot rules, only over the version the writer read when
-- it names one.
-- KEYS[1]   BOT_RULES (hash: json, version, updated_at)
-- ARGV[1]   the rules (JSON)
-- ARGV[2]   the version the writer read ('' = whatever it is)
-- ARGV[3]   updated_at
-- Returns   {the version written, the one before}, or {-1, the current one} if another
--           change came first.
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= current then
  return {-1, current}
end
redis.call('HSET', KEYS[1], 'json', ARGV[1], 'version', current + 1, 'updated_at', ARGV[3])
return {current + 1, current}
