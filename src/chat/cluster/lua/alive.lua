-- Registers a node as live, or refreshes its liveness key.
--
-- KEYS[1]  the set of live nodes, KEYS[2] this node's liveness key
-- ARGV[1]  the node id, ARGV[2] the key's time to live in milliseconds,
-- ARGV[3]  'register' (at start-up) or 'refresh' (periodically)
--
-- Returns 1, or 0 for a refresh of a node that is no longer registered:
-- it was declared dead (its users were announced as left and their names
-- freed), so it must not carry on as if they were still online.
if ARGV[3] == 'register' then
  redis.call('SADD', KEYS[1], ARGV[1])
elseif redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return 1
