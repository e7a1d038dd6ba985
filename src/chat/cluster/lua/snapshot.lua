-- What a node reads when it (re)joins the cluster, in one atomic step:
-- the epoch (created if Redis has none), whether the node was still
-- registered, its registration, and where every stream stands, so that
-- its reader continues from there without a gap.
--
-- KEYS[1]  the epoch key, KEYS[2] the set of live nodes,
-- KEYS[3]  this node's liveness key, KEYS[4] the presence stream,
-- KEYS[5]  the online hash, KEYS[6] the names hash,
-- KEYS[7]  the history stream
-- ARGV[1]  the node id, ARGV[2] the liveness key's time to live in
--          milliseconds, ARGV[3] a random epoch, used if there is none,
-- ARGV[4]  how many of the last public messages to return
--
-- Returns {epoch, 1 if the node was registered before else 0, the
-- presence stream's last entry id ('0-0' if none), a flat list of name as
-- typed and node id for every user online, the last ARGV[4] history
-- entries oldest first, the history's last entry id ('0-0' if none)}.
redis.call('SET', KEYS[1], ARGV[3], 'NX')
local epoch = redis.call('GET', KEYS[1])
local was = redis.call('SISMEMBER', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])

local function last_id(stream)
  local entry = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if entry[1] then
    return entry[1][1]
  end
  return '0-0'
end

local users = {}
local online = redis.call('HGETALL', KEYS[5])
for i = 1, #online, 2 do
  local node = redis.call('HGET', KEYS[6], online[i])
  if node then
    users[#users + 1] = online[i + 1]
    users[#users + 1] = node
  end
end

local history = {}
local keep = tonumber(ARGV[4])
if keep > 0 then
  local newest = redis.call('XREVRANGE', KEYS[7], '+', '-', 'COUNT', keep)
  for i = #newest, 1, -1 do
    history[#history + 1] = newest[i]
  end
end
return {epoch, was, last_id(KEYS[4]), users, history, last_id(KEYS[7])}
