-- keep_lease: renew or release a lease, only while this holder holds it.
-- KEYS[1]   the lease
-- ARGV[1]   the holder
-- ARGV[2]   its new lifetime (ms; '' = release it)
-- Returns   1 renewed or released, 0 not held.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
