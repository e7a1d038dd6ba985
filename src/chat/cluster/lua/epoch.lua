-- The chat's epoch: set once, by whoever comes first, then read by all.
-- A Redis that lost its data has no epoch key, so the next node to start
-- or reconnect creates a new one.
--
-- KEYS[1]  the epoch key
-- ARGV[1]  a random value, used if there is no epoch yet
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
