"""Server-side Lua scripts: every write is one atomic round trip.

All keys a script touches share the session's hash tag, so each script runs on
one Redis Cluster node; the channel shares it too, so SPUBLISH works from the
script on a cluster.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "APPLY",
    "APPLY_MANY",
    "CHANGES",
    "PRESENCE_JOIN",
    "PRESENCE_LEAVE",
    "PRESENCE_REAP",
    "SNAPSHOT",
]

# Shared by APPLY and APPLY_MANY: append ``record`` to the history, then drop the
# oldest records while it holds more than ``keep`` of them or ``max_hbytes`` bytes
# (the running sum is kept in meta), and refresh the six keys' TTL. Expects the
# locals record, history, meta, keep, max_hbytes and ttl.
_APPEND_HISTORY: Final = """local hbytes = redis.call('HGET', meta, 'history_bytes')
if not hbytes then
  -- A history kept before it was measured in bytes may be huge: drop it once
  -- (resumes from before it get a snapshot) rather than measure it here;
  -- UNLINK frees its memory off Redis's main thread.
  redis.call('UNLINK', history)
  hbytes = 0
end
redis.call('RPUSH', history, record)
hbytes = tonumber(hbytes) + #record
local kept = redis.call('LLEN', history)
while kept > 0 and (kept > keep or hbytes > max_hbytes) do
  hbytes = hbytes - #redis.call('LPOP', history)
  kept = kept - 1
end
redis.call('HSET', meta, 'history_bytes', hbytes)
for i = 1, 6 do redis.call('PEXPIRE', KEYS[i], ttl) end
"""

#: KEYS: state, meta, history, snapshots, snapshot states, snapshot ids.
#: ARGV: field, op (SET|DELETE), value JSON, now (s), ttl (ms), history size,
#:       max bytes, max keys, channel, envelope tail JSON, origin header,
#:       user_id, device_id, publish command (PUBLISH|SPUBLISH), history max bytes,
#:       base version ("" = last writer wins).
#: Returns {"OK", version, created_at} or {error code, detail}
#: (VERSION_CONFLICT's detail is the current version).
#: The state size counts bytes exactly as the memory store does:
#: len(key) + len(JSON value). The history is bounded like the memory store's:
#: at most `history size` records and `history max bytes` bytes of them, oldest
#: dropped first; meta's `history_bytes` keeps the sum so nothing is re-measured.
APPLY: Final = (
    """
local state, meta, history = KEYS[1], KEYS[2], KEYS[3]
local field, op, value = ARGV[1], ARGV[2], ARGV[3]
local now = ARGV[4]
local ttl = tonumber(ARGV[5])
if ARGV[16] ~= '' then
  local current = tonumber(redis.call('HGET', meta, 'version') or '0')
  if current ~= tonumber(ARGV[16]) then return {'VERSION_CONFLICT', current} end
end
local total = tonumber(redis.call('HGET', meta, 'bytes') or '0')
local exists = redis.call('HEXISTS', state, field) == 1
local old = 0
if exists then old = #field + redis.call('HSTRLEN', state, field) end
if op == 'SET' then
  local new_total = total - old + #field + #value
  if new_total > tonumber(ARGV[7]) then return {'STATE_TOO_LARGE', new_total} end
  if (not exists) and redis.call('HLEN', state) >= tonumber(ARGV[8]) then
    return {'TOO_MANY_KEYS', tonumber(ARGV[8])}
  end
  redis.call('HSET', state, field, value)
  total = new_total
else
  if exists then
    redis.call('HDEL', state, field)
    total = total - old
  end
  value = 'null'
end
local version = redis.call('HINCRBY', meta, 'version', 1)
redis.call('HSET', meta, 'bytes', total, 'updated_at', now, 'updated_user', ARGV[12],
  'updated_device', ARGV[13])
redis.call('HSETNX', meta, 'created_at', now)
local key_json = cjson.encode(field)
local record = '{"version":' .. version .. ',"key":' .. key_json .. ',"value":' .. value ..
  ',"operation":"' .. op .. '","at":' .. now .. ',"user_id":' .. cjson.encode(ARGV[12]) ..
  ',"device_id":' .. cjson.encode(ARGV[13]) .. '}'
local keep, max_hbytes = tonumber(ARGV[6]), tonumber(ARGV[15])
"""
    + _APPEND_HISTORY
    + """local frame = '{"type":5,"timestamp":' .. now .. ',"payload":{"key":' .. key_json ..
  ',"value":' .. value .. ',"operation":"' .. op .. '","version":' .. version .. '}' .. ARGV[10]
-- The routing header (ARGV[11], a JSON array and a newline) gains the version, so
-- the writer's relay can place the writer's ack at this version's turn.
redis.call(ARGV[14], ARGV[9], string.sub(ARGV[11], 1, -3) .. ',' .. version .. ']\\n' .. frame)
return {'OK', version, redis.call('HGET', meta, 'created_at')}
"""
)

#: KEYS: state, meta, history, snapshots, snapshot states, snapshot ids.
#: ARGV: now (s), ttl (ms), history size, max bytes, max keys, channel,
#:       envelope tail JSON, origin header, user_id, device_id, publish command,
#:       history max bytes, base version ("" = none), then per edit: field, op, value.
#: One new version for every edit (distinct fields), all or none: limits are
#: checked on the result before anything is written. One history record holds
#: the edits ({"version", "changes": [...], ...}); one StateUpdate frame per edit
#: is published, each carrying the new version, in the order given.
#: Returns {"OK", version} or {error code, detail} like APPLY.
APPLY_MANY: Final = (
    """
local state, meta, history = KEYS[1], KEYS[2], KEYS[3]
local now, ttl = ARGV[1], tonumber(ARGV[2])
local current = tonumber(redis.call('HGET', meta, 'version') or '0')
if ARGV[13] ~= '' and current ~= tonumber(ARGV[13]) then
  return {'VERSION_CONFLICT', current}
end
local total = tonumber(redis.call('HGET', meta, 'bytes') or '0')
local keys_before = redis.call('HLEN', state)
local keys = keys_before
local n = (#ARGV - 13) / 3
for i = 0, n - 1 do
  local field, op, value = ARGV[14 + 3 * i], ARGV[15 + 3 * i], ARGV[16 + 3 * i]
  if redis.call('HEXISTS', state, field) == 1 then
    total = total - #field - redis.call('HSTRLEN', state, field)
    keys = keys - 1
  end
  if op == 'SET' then
    total = total + #field + #value
    keys = keys + 1
  end
end
if total > tonumber(ARGV[4]) then return {'STATE_TOO_LARGE', total} end
if keys > tonumber(ARGV[5]) and keys > keys_before then return {'TOO_MANY_KEYS', keys} end
local entries, frames = {}, {}
local version = current + 1
for i = 0, n - 1 do
  local field, op, value = ARGV[14 + 3 * i], ARGV[15 + 3 * i], ARGV[16 + 3 * i]
  if op == 'SET' then redis.call('HSET', state, field, value) else
    redis.call('HDEL', state, field)
  end
  local body = '{"key":' .. cjson.encode(field) .. ',"value":' .. value ..
    ',"operation":"' .. op .. '"'
  entries[#entries + 1] = body .. '}'
  frames[#frames + 1] = '{"type":5,"timestamp":' .. now .. ',"payload":' .. body ..
    ',"version":' .. version .. '}' .. ARGV[7]
end
redis.call('HSET', meta, 'version', version, 'bytes', total, 'updated_at', now,
  'updated_user', ARGV[9], 'updated_device', ARGV[10])
redis.call('HSETNX', meta, 'created_at', now)
local record = '{"version":' .. version .. ',"changes":[' .. table.concat(entries, ',') ..
  '],"at":' .. now .. ',"user_id":' .. cjson.encode(ARGV[9]) ..
  ',"device_id":' .. cjson.encode(ARGV[10]) .. '}'
local keep, max_hbytes = tonumber(ARGV[3]), tonumber(ARGV[12])
"""
    + _APPEND_HISTORY
    + """for _, frame in ipairs(frames) do redis.call(ARGV[11], ARGV[6], ARGV[8] .. frame) end
return {'OK', version}
"""
)

#: KEYS: state, meta, history, snapshots, snapshot states, snapshot ids.
#: ARGV: id, label JSON, now (s), user JSON, device JSON, keep, ttl (ms).
#: A labelled restore point of the state as it is, read and stored atomically;
#: the oldest are dropped beyond `keep`; every key of the session gets the
#: session's TTL (a restore point expires with its session). Returns the
#: description JSON.
SNAPSHOT_SAVE: Final = """
local flat = redis.call('HGETALL', KEYS[1])
local parts = {}
for i = 1, #flat, 2 do parts[#parts + 1] = cjson.encode(flat[i]) .. ':' .. flat[i + 1] end
local version = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
local id = ARGV[1]
local desc = '{"id":"' .. id .. '","version":' .. version .. ',"label":' .. ARGV[2] ..
  ',"created_at":' .. ARGV[3] .. ',"created_by":{"user_id":' .. ARGV[4] ..
  ',"device_id":' .. ARGV[5] .. '}}'
redis.call('HSET', KEYS[4], id, desc)
redis.call('HSET', KEYS[5], id, '{' .. table.concat(parts, ',') .. '}')
redis.call('LPUSH', KEYS[6], id)
while redis.call('LLEN', KEYS[6]) > tonumber(ARGV[6]) do
  local old = redis.call('RPOP', KEYS[6])
  redis.call('HDEL', KEYS[4], old)
  redis.call('HDEL', KEYS[5], old)
end
for i = 1, 6 do redis.call('PEXPIRE', KEYS[i], ARGV[7]) end
return desc
"""

#: KEYS: snapshots, snapshot ids. Returns the descriptions, newest first.
SNAPSHOT_LIST: Final = """
local ids = redis.call('LRANGE', KEYS[2], 0, -1)
if #ids == 0 then return {} end
return redis.call('HMGET', KEYS[1], unpack(ids))
"""

#: KEYS: the session's versioned keys (state, meta, history, snapshots, snapshot
#: states, snapshot ids). Returns the session's version before (0: nothing was there).
DELETE_SESSION: Final = """
local version = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
redis.call('UNLINK', unpack(KEYS))
return version
"""

#: KEYS: ticket. ARGV: claiming user id.
#: Returns {"OK", record} (the ticket is gone from then on), {"OTHER_USER"} (left in
#: place) or {"GONE"} (claimed before, expired or unknown).
CLAIM_TICKET: Final = """
local record = redis.call('GET', KEYS[1])
if not record then return {'GONE'} end
if cjson.decode(record)['user_id'] ~= ARGV[1] then return {'OTHER_USER'} end
redis.call('DEL', KEYS[1])
return {'OK', record}
"""

#: KEYS: state, meta. Returns {flat field/value list,
#: {version, created_at, updated_at, updated_user, updated_device}}.
SNAPSHOT: Final = """
return {redis.call('HGETALL', KEYS[1]),
        redis.call('HMGET', KEYS[2], 'version', 'created_at', 'updated_at', 'updated_user',
                   'updated_device')}
"""

#: KEYS: meta, history. ARGV: since (version), max replay bytes.
#: Returns {"CHANGES", record, ...} (the records after `since`, oldest first) or
#: {"SNAPSHOT"} when the history does not reach back to `since`, `since` is
#: ahead of the session, or the records to replay exceed max replay bytes. The
#: decision is made here, so a replay over budget never leaves Redis; measuring
#: stops at the first record that breaks the budget.
CHANGES: Final = """
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
local since, budget = tonumber(ARGV[1]), tonumber(ARGV[2])
if since == version then return {'CHANGES'} end
local kept = redis.call('LLEN', KEYS[2])
-- versions are consecutive and each kept one has a record, newest last
if since > version or kept == 0 or version - kept + 1 > since + 1 then return {'SNAPSHOT'} end
local count = version - since
-- -1: a history kept before it was measured (see APPLY): measure it here
local hbytes = tonumber(redis.call('HGET', KEYS[1], 'history_bytes') or '-1')
if hbytes < 0 or hbytes > budget then
  local size = 0
  for i = 1, count do
    size = size + #redis.call('LINDEX', KEYS[2], -i)
    if size > budget then return {'SNAPSHOT'} end
  end
end
local reply = redis.call('LRANGE', KEYS[2], -count, -1)
table.insert(reply, 1, 'CHANGES')
return reply
"""

# Presence: a sorted set of "<device_id>\\x1f<connection id>" scored by expiry
# (ms), and a hash of device descriptions. A device is online while one of its
# members has not expired.

_PRESENCE_HELPERS: Final = """
local function device_of(member)
  local i = string.find(member, '\\31', 1, true)
  return string.sub(member, 1, i - 1)
end
local function online_devices(zset, now)
  local seen, count = {}, 0
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', zset, '(' .. now, '+inf')) do
    local d = device_of(m)
    if not seen[d] then seen[d] = true; count = count + 1 end
  end
  return seen, count
end
"""

#: KEYS: presence zset, devices hash.
#: ARGV: member, device_id, expiry ms, now ms, max devices, description JSON,
#:       ttl ms, channel, joined message (header + frame), publish command.
#: Returns {1 came online | 0 already online} or {-1, online count} at the limit.
PRESENCE_JOIN: Final = (
    _PRESENCE_HELPERS
    + """
local zset, devices = KEYS[1], KEYS[2]
local member, device = ARGV[1], ARGV[2]
local online, count = online_devices(zset, ARGV[4])
local came_online = 0
if not online[device] then
  if count >= tonumber(ARGV[5]) then return {-1, count} end
  came_online = 1
end
local desc = ARGV[6]
if came_online == 0 then
  -- another connection of an online device: keep when the device came online
  local old = redis.call('HGET', devices, device)
  if old then
    local o, n = cjson.decode(old), cjson.decode(desc)
    n['connected_at'] = o['connected_at']
    desc = cjson.encode(n)
  end
end
redis.call('ZADD', zset, ARGV[3], member)
redis.call('HSET', devices, device, desc)
redis.call('PEXPIRE', zset, ARGV[7])
redis.call('PEXPIRE', devices, ARGV[7])
if came_online == 1 then redis.call(ARGV[10], ARGV[8], ARGV[9]) end
return {came_online, count}
"""
)

#: KEYS: presence zset, devices hash.
#: ARGV: member, device_id, now ms, description JSON (with last_seen), channel,
#:       left message (header + frame), publish command.
#: Returns 1 when the device went offline with this member (DeviceLeft published).
PRESENCE_LEAVE: Final = (
    _PRESENCE_HELPERS
    + """
local zset, devices = KEYS[1], KEYS[2]
if redis.call('ZREM', zset, ARGV[1]) == 0 then return 0 end
local online = online_devices(zset, ARGV[3])
if online[ARGV[2]] then return 0 end
redis.call('HSET', devices, ARGV[2], ARGV[4])
redis.call(ARGV[7], ARGV[5], ARGV[6])
return 1
"""
)

#: KEYS: presence zset, devices hash. ARGV: now ms.
#: Removes expired members (their process stopped refreshing them) and returns
#: the descriptions of the devices that went offline because of it, once:
#: ZREM decides which of several reaping processes reports a device.
PRESENCE_REAP: Final = (
    _PRESENCE_HELPERS
    + """
local zset, devices = KEYS[1], KEYS[2]
local expired = redis.call('ZRANGEBYSCORE', zset, '-inf', ARGV[1])
if #expired == 0 then return {} end
local gone = {}
for _, m in ipairs(expired) do
  if redis.call('ZREM', zset, m) == 1 then gone[device_of(m)] = true end
end
local online = online_devices(zset, ARGV[1])
local left = {}
for d, _ in pairs(gone) do
  if not online[d] then
    table.insert(left, d)
    table.insert(left, redis.call('HGET', devices, d) or '{}')
  end
end
return left
"""
)
