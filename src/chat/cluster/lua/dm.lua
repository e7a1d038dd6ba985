-- Sends a direct message: stores it in the inbox of the recipient's node,
-- and in the sender's node's if that is another, under an id of the
-- chat's one sequence (shared with public messages).
--
-- KEYS[1]  the names hash: name key -> node id
-- KEYS[2]  the online hash: name key -> name as typed
-- KEYS[3]  the id counter (the one publish.lua allocates from)
-- KEYS[4]  the cid's record, a hash (only when the DM has a cid)
-- ARGV[1]  the key prefix: a node's inbox is PREFIX:node:ID:inbox
--          (derived from the names hash's value, so it cannot be passed
--          in KEYS; it shares the prefix's hash tag, hence its slot)
-- ARGV[2]  the recipient's name key, ARGV[3] the sender's name key,
-- ARGV[4]  ts, ARGV[5] from (as typed), ARGV[6] to (as the sender typed
--          it), ARGV[7] text, ARGV[8] cid ('' for none),
-- ARGV[9]  how long a cid is remembered, in seconds,
-- ARGV[10] the inbox's bound (MAXLEN ~), ARGV[11] the sender's node id
--
-- Returns {'sent', id, recipient's name as typed}, {'unknown'} when
-- nobody online has that name (no id is allocated), or
-- {'duplicate', id, ts, from, to, text} when the same sender sent this cid
-- before. A cid another sender recorded does not make a duplicate: the DM
-- is new, and that sender's record is kept.
local cid = ARGV[8]
local record = false
if cid ~= '' then
  local old = redis.call('HMGET', KEYS[4], 'id', 'ts', 'from', 'to', 'text', 'sender')
  if old[1] then
    record = true
    if old[6] == ARGV[3] then
      return {'duplicate', tonumber(old[1]), old[2], old[3], old[4], old[5]}
    end
  end
end
local node = redis.call('HGET', KEYS[1], ARGV[2])
if not node then
  return {'unknown'}
end
local to = redis.call('HGET', KEYS[2], ARGV[2]) or ARGV[6]
local id = redis.call('INCR', KEYS[3])
local fields = {'id', id, 'ts', ARGV[4], 'from', ARGV[5], 'to', to, 'text', ARGV[7]}
if cid ~= '' then
  fields[#fields + 1] = 'cid'
  fields[#fields + 1] = cid
end
-- The recipient's node shows it to the recipient; the sender's node (if
-- another) to the sender, as its acknowledgement. Both read it from their
-- inbox with the history, so neither sees it before a public message
-- with a smaller id.
redis.call('XADD', ARGV[1] .. ':node:' .. node .. ':inbox', 'MAXLEN', '~', ARGV[10], '*',
  unpack(fields))
if ARGV[11] ~= node then
  redis.call('XADD', ARGV[1] .. ':node:' .. ARGV[11] .. ':inbox', 'MAXLEN', '~', ARGV[10], '*',
    unpack(fields))
end
if cid ~= '' and not record then
  redis.call('HSET', KEYS[4], 'id', id, 'ts', ARGV[4], 'from', ARGV[5],
    'to', to, 'text', ARGV[7], 'sender', ARGV[3])
  redis.call('EXPIRE', KEYS[4], ARGV[9])
end
return {'sent', id, to}
