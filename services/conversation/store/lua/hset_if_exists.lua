-- hset_if_exists: fields of a work item, only while it exists: work in flight never
-- recreates an item that an erase (or its expiry) removed.
-- KEYS[1]   the item (hash)
-- ARGV      field, value, field, value...
-- Returns   1 set, 0 the item is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
