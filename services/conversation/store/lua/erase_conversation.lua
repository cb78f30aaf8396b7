-- erase_conversation: deletes one conversation's keys and queue entries at once — the
-- one deletion of a conversation (an erase, the retention sweep, a reset).
-- KEYS[1]   CONVERSATIONS
-- ARGV[1]   JSON: id (conversation id); cutoff (> 0: only if the conversation has had
--           no message since — the sweep must not take a conversation a message just
--           refreshed); delete (keys); pointers (index keys deleted only while they point
--           to this conversation); unqueue ([queue, member] pairs)
-- Returns   {keys deleted, queue entries removed}, or {-1, 0} when a message came after
--           the cutoff (nothing deleted).
local a = cjson.decode(ARGV[1])
if a.cutoff > 0 then
  local score = redis.call('ZSCORE', KEYS[1], a.id)
  if score and tonumber(score) >= a.cutoff then return {-1, 0} end
end
local keys = 0
for _, k in ipairs(a.delete) do keys = keys + redis.call('DEL', k) end
for _, k in ipairs(a.pointers) do
  if redis.call('GET', k) == a.id then keys = keys + redis.call('DEL', k) end
end
local queued = 0
for _, p in ipairs(a.unqueue) do queued = queued + redis.call('ZREM', p[1], p[2]) end
recount(a.id)
return {keys, queued}
