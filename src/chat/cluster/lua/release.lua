-- Releases a name this node holds, and announces the leave.
--
-- KEYS[1]  the names hash, KEYS[2] this node's users hash,
-- KEYS[3]  the presence stream
-- KEYS[4]  the online hash
-- ARGV[1]  the name key, ARGV[2] the node id,
-- ARGV[3]  the presence stream's bound (MAXLEN ~)
--
-- Returns the number of users still online, or -1 if this node did not
-- hold the name (already released, or freed because the node was declared
-- dead): then nothing is announced, so a leave is announced once.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return -1
end
local name = redis.call('HGET', KEYS[2], ARGV[1]) or ARGV[1]
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
local online = redis.call('HLEN', KEYS[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*',
  'type', 'left', 'name', name, 'node', ARGV[2], 'online', online)
return online
