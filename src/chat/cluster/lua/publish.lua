-- Publishes one round's public messages atomically.
--
-- KEYS[1]  the id counter (a string holding the last id allocated)
-- KEYS[2]  the history stream; entry ids are "<message id>-0"
-- KEYS[3..] one cid key per message that has a cid, in message order
-- ARGV[1]  the stream's bound (MAXLEN ~)
-- ARGV[2]  how long a cid is remembered, in seconds
-- ARGV[3]  n, the number of messages; then four arguments per message:
--          ts, from, text, cid ('' for none)
--
-- Returns one {id, 0} per new message and one {id, 1, fields} per message
-- whose cid was accepted before (fields: the stored entry's field list, or
-- an empty list if the bound has trimmed it away). New messages get
-- consecutive ids from one INCRBY, in the order given.
local n = tonumber(ARGV[3])

-- Pass 1: which messages are new. A cid repeated inside the round counts
-- once, like a cid already stored.
local seen = {}
local fresh = 0
local key_of = {}
local k = 3
for i = 1, n do
  local cid = ARGV[3 + 4 * i]
  local new = true
  if cid ~= '' then
    key_of[i] = KEYS[k]
    k = k + 1
    if seen[cid] or redis.call('EXISTS', key_of[i]) == 1 then
      new = false
    end
    seen[cid] = true
  end
  if new then
    fresh = fresh + 1
  end
end

-- Pass 2: allocate the ids at once, then append in order.
local next_id = redis.call('INCRBY', KEYS[1], fresh) - fresh + 1
local out = {}
for i = 1, n do
  local base = 4 * i
  local ts, from, text, cid = ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  local old = key_of[i] and redis.call('GET', key_of[i])
  if old then
    local entry = redis.call('XRANGE', KEYS[2], old .. '-0', old .. '-0')
    local fields = {}
    if entry[1] then
      fields = entry[1][2]
    end
    out[i] = {tonumber(old), 1, fields}
  else
    local id = next_id
    next_id = next_id + 1
    if cid ~= '' then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], id .. '-0',
        'ts', ts, 'from', from, 'text', text, 'cid', cid)
      redis.call('SET', key_of[i], id, 'EX', ARGV[2])
    else
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], id .. '-0',
        'ts', ts, 'from', from, 'text', text)
    end
    out[i] = {id, 0}
  end
end
return out
