-- Refreshes a live node's liveness key (`snapshot.lua` registers it).
--
-- KEYS[1]  the set of live nodes, KEYS[2] this node's liveness key
-- ARGV[1]  the node id, ARGV[2] the key's time to live in milliseconds
--
-- Returns 1, or 0 for a node that is no longer registered: it was
-- declared dead (its users were announced as left and their names freed),
-- so it must not carry on as if they were still online.
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return 1
