-- Renames a user this node holds, and announces the rename.
--
-- KEYS[1]  the names hash, KEYS[2] this node's users hash,
-- KEYS[3]  the presence stream
-- KEYS[4]  the online hash
-- ARGV[1]  the old name's key, ARGV[2] the new name's key,
-- ARGV[3]  the new name as typed, ARGV[4] the node id,
-- ARGV[5]  the presence stream's bound (MAXLEN ~)
--
-- Returns 1 once renamed, 0 if the new name is taken (by anyone, on any
-- node, case-insensitively), -1 if this node does not hold the old name
-- (it was freed because the node was declared dead): then nothing
-- changes and nothing is announced.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[4] then
  return -1
end
local old = redis.call('HGET', KEYS[2], ARGV[1]) or ARGV[1]
if ARGV[2] ~= ARGV[1] then
  if redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[4]) == 0 then
    return 0
  end
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[1])
end
-- A change of case keeps the key: only the name shown changes.
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
local online = redis.call('HLEN', KEYS[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*',
  'type', 'renamed', 'from', old, 'name', ARGV[3], 'node', ARGV[4],
  'online', online)
return 1
