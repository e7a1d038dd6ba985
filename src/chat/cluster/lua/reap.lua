-- Declares dead every registered node whose liveness key expired: frees
-- its users' names and announces each of them as left, once, and drops
-- its inbox (its users are gone, so nobody will read their DMs). Scripts
-- run one at a time, so two nodes reaping at the same moment cannot both
-- announce the same user.
--
-- KEYS[1]  the set of live nodes, KEYS[2] the names hash,
-- KEYS[3]  the presence stream
-- KEYS[4]  the online hash
-- ARGV[1]  the key prefix: a node's keys are
--          PREFIX:node:ID:alive, PREFIX:node:ID:users and
--          PREFIX:node:ID:inbox
--          (derived from the set's members, so they cannot be passed in
--          KEYS; they share the prefix's hash tag, hence its slot)
-- ARGV[2]  the presence stream's bound (MAXLEN ~)
--
-- Returns a flat list: node id, name, node id, name... for every user
-- announced as left.
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local base = ARGV[1] .. ':node:' .. node
  if redis.call('EXISTS', base .. ':alive') == 0 then
    local users = redis.call('HGETALL', base .. ':users')
    for i = 1, #users, 2 do
      if redis.call('HGET', KEYS[2], users[i]) == node then
        redis.call('HDEL', KEYS[2], users[i])
        redis.call('HDEL', KEYS[4], users[i])
        local online = redis.call('HLEN', KEYS[2])
        redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*',
          'type', 'left', 'name', users[i + 1], 'node', node, 'online', online)
        out[#out + 1] = node
        out[#out + 1] = users[i + 1]
      end
    end
    redis.call('DEL', base .. ':users', base .. ':inbox')
    redis.call('SREM', KEYS[1], node)
  end
end
return out
