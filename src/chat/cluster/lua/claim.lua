-- Claims a name for a user of a live node, and announces the join.
--
-- KEYS[1]  the names hash: name key (lowercase) -> node id
-- KEYS[2]  this node's users hash: name key -> name as typed
-- KEYS[3]  the set of live nodes
-- KEYS[4]  the presence stream
-- KEYS[5]  the online hash: name key -> name as typed, for `who`
-- ARGV[1]  the name key, ARGV[2] the name as typed, ARGV[3] the node id,
-- ARGV[4]  the presence stream's bound (MAXLEN ~)
--
-- Returns the number of users online once the name is claimed, 0 if the
-- name is taken, -1 if the node is not (or no longer) registered as live:
-- a name claimed by a node that was declared dead would never be freed.
if redis.call('SISMEMBER', KEYS[3], ARGV[3]) == 0 then
  return -1
end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3]) == 0 then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[2])
local online = redis.call('HLEN', KEYS[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*',
  'type', 'joined', 'name', ARGV[2], 'node', ARGV[3], 'online', online)
return online
