#!lua name=agentqueue
-- The agentqueue Functions library (Redis 7+). Contracts: docs/design.md and, for
-- clients in other languages, docs/security.md ("The contract per role").
--
-- Every key of one call shares a partition's hash tag, so this works in Redis
-- Cluster. Functions run with the caller's ACL: each redis.call below is checked
-- against the calling user, so a role may only run what its own rules allow.
--
-- A function does not roll back, so every function checks its arguments and the
-- types of its keys first and writes only then; a message is acked (XACK) only
-- after its retry or dead-letter entry exists. A failed write leaves the message
-- pending, never lost.
--
-- The version line is read by redisgw/functions.py; bump it on every change so
-- the operator replaces the library on running servers.
local VERSION = '5'

-- Envelope fields the library manages itself (docs/design.md).
local DLQ_PREFIX = 'x.'
-- Extra key in a retry member: the nacked entry id. Keeps two identical messages
-- that fail alike from collapsing into one sorted-set member (data loss);
-- removed again when the message is promoted.
local RETRY_SRC = 'aq.src'
-- Largest batch aq_promote moves in one call (it blocks the server meanwhile).
local PROMOTE_MAX = 1000

local function fail(fn, msg)
  return redis.error_reply('ERR ' .. fn .. ': ' .. msg)
end

-- nil when `key` holds `wanted` (or nothing), else the error reply. TYPE may be
-- denied to users defined by an operator older than this library (until it
-- re-asserts them); the write itself then still refuses a wrong type.
local function check_type(fn, key, wanted, what)
  local t = redis.pcall('TYPE', key)
  if type(t) ~= 'table' or t['err'] then
    return nil
  end
  t = t['ok']
  if t ~= 'none' and t ~= wanted then
    return redis.error_reply('WRONGTYPE ' .. fn .. ': ' .. what .. ' key ' .. key ..
                             ' holds a ' .. t .. ', not a ' .. wanted)
  end
  return nil
end

local function is_entry_id(id)
  return type(id) == 'string' and string.match(id, '^%d+%-%d+$') ~= nil
end

-- A finite whole number (Lua's tonumber also takes 'inf', 'nan', '0x10', '1e3').
local function whole(value)
  if type(value) ~= 'string' or not string.match(value, '^%-?%d+$') then
    return nil
  end
  return tonumber(value)
end

-- The attempt counter of a message: a non-negative whole number; anything else a
-- client wrote into field 'a' counts as 0.
local function attempts(value)
  local n = whole(value)
  if not n or n < 0 then
    return 0
  end
  return n
end

local function exhausted(fn, key, err)
  if string.find(err, 'exhausted', 1, true) then
    return fail(fn, 'stream ' .. key .. ' can take no more entries (its last ID is the ' ..
                'largest possible); the queue must be repaired by an administrator')
  end
  return redis.error_reply(err)
end

local function aq_version(keys, args)
  return VERSION
end

-- keys: queue stream [, idempotency key]; args: ttl ms, field, value, ...
-- Returns {id, 0}, or {existing id, 1} when the idempotency key was seen.
-- The ID is always Redis' ('*') and nothing is trimmed: producers choose neither.
local function aq_enqueue(keys, args)
  local nargs = #args
  if #keys < 1 or #keys > 2 then
    return fail('aq_enqueue', 'expected the queue stream and optionally an idempotency key')
  end
  if nargs < 3 or (nargs - 1) % 2 ~= 0 then
    return fail('aq_enqueue', 'expected ttl_ms then field value pairs')
  end
  local fields = {}
  for i = 2, nargs do
    fields[#fields + 1] = args[i]
  end
  local idem = keys[2]
  local ttl = nil
  if idem then
    ttl = whole(args[1])
    if not ttl or ttl <= 0 then
      return fail('aq_enqueue', 'ttl_ms must be a positive integer')
    end
  end
  local bad = check_type('aq_enqueue', keys[1], 'stream', 'queue')
  if bad then return bad end
  if idem then
    bad = check_type('aq_enqueue', idem, 'string', 'idempotency')
    if bad then return bad end
    local existing = redis.call('GET', idem)
    if existing then
      return {existing, 1}
    end
  end
  local id = redis.pcall('XADD', keys[1], '*', unpack(fields))
  if type(id) == 'table' and id['err'] then
    return exhausted('aq_enqueue', keys[1], id['err'])
  end
  if idem then
    redis.call('SET', idem, id, 'PX', ttl)
  end
  return {id, 0}
end

-- The entry `id` of `stream` if it is pending for `group`: its fields, or false when
-- it is pending but gone from the stream (trimmed, deleted); nil when not pending
-- (someone else handled it: retrying or dead-lettering it again would duplicate it).
local function pending_entry(stream, group, id)
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  if #p == 0 then
    return nil
  end
  local entries = redis.call('XRANGE', stream, id, id)
  if #entries == 0 then
    return false
  end
  return entries[1][2]
end

-- keys: queue stream, retry zset [, stats hash]; args: group, entry id, due ms, error
-- With the stats hash (the partition's aq:{..}:stats), a scheduled retry is counted
-- in its field 'retries' (the retry-rate SLO); callers passing two keys (SDKs older
-- than library version 4) are not counted. The retry is written before the XACK.
local function aq_nack(keys, args)
  if #keys < 2 or #keys > 3 then
    return fail('aq_nack', 'expected the queue stream, the retry set and optionally the stats hash')
  end
  local group, id = args[1], args[2]
  if type(group) ~= 'string' or group == '' or not is_entry_id(id) then
    return fail('aq_nack', 'expected a group and an entry id such as 1700000000000-0')
  end
  local due = whole(args[3])
  if not due or due < 0 then
    return fail('aq_nack', 'due_ms must be a non-negative integer')
  end
  local bad = check_type('aq_nack', keys[1], 'stream', 'queue')
    or check_type('aq_nack', keys[2], 'zset', 'retry')
    or (keys[3] and check_type('aq_nack', keys[3], 'hash', 'stats'))
  if bad then return bad end
  local flat = pending_entry(keys[1], group, id)
  if flat == nil then
    return 0
  end
  if flat == false then
    redis.call('XACK', keys[1], group, id)
    return 0
  end
  local msg = {}
  for i = 1, #flat, 2 do
    msg[flat[i]] = flat[i + 1]
  end
  msg['a'] = tostring(attempts(msg['a']) + 1)
  msg['e'] = args[4] or ''
  msg[RETRY_SRC] = id
  redis.call('ZADD', keys[2], due, cjson.encode(msg))
  if keys[3] then
    redis.call('HINCRBY', keys[3], 'retries', 1)
  end
  redis.call('XACK', keys[1], group, id)
  return 1
end

-- keys: queue stream, retry zset; args: now ms, limit (1..1000)
-- Each message is added to the stream before it leaves the retry set.
local function aq_promote(keys, args)
  if #keys ~= 2 then
    return fail('aq_promote', 'expected the queue stream and the retry set')
  end
  local now = whole(args[1])
  local limit = whole(args[2])
  if not now or not limit or limit < 1 or limit > PROMOTE_MAX then
    return fail('aq_promote', 'expected now_ms and a limit from 1 to ' .. PROMOTE_MAX)
  end
  local bad = check_type('aq_promote', keys[1], 'stream', 'queue')
    or check_type('aq_promote', keys[2], 'zset', 'retry')
  if bad then return bad end
  local due = redis.call('ZRANGE', keys[2], '-inf', now, 'BYSCORE', 'LIMIT', 0, limit)
  for n, member in ipairs(due) do
    local ok, msg = pcall(cjson.decode, member)
    local fields = {}
    if ok and type(msg) == 'table' then
      -- 'd' first keeps entries readable in redis-cli; order has no meaning.
      if msg['d'] ~= nil then
        fields[#fields + 1] = 'd'
        fields[#fields + 1] = tostring(msg['d'])
      end
      for k, v in pairs(msg) do
        if k ~= 'd' and k ~= RETRY_SRC then
          fields[#fields + 1] = tostring(k)
          fields[#fields + 1] = tostring(v)
        end
      end
    end
    if #fields == 0 then
      -- Never drop a message: an unreadable member goes back whole, as the payload.
      fields = {'d', member, 'e', 'aq: undecodable retry entry'}
    end
    local res = redis.pcall('XADD', keys[1], '*', unpack(fields))
    if type(res) == 'table' and res['err'] then
      -- The ones moved so far are complete; this one stays in the retry set.
      return exhausted('aq_promote', keys[1], res['err'])
    end
    redis.call('ZREM', keys[2], member)
  end
  return #due
end

-- keys: queue stream, dlq stream; args: group, entry id, consumer, error, deliveries, now ms
-- The dead-letter entry is written before the XACK.
local function aq_deadletter(keys, args)
  if #keys ~= 2 then
    return fail('aq_deadletter', 'expected the queue stream and the dead-letter stream')
  end
  local group, id = args[1], args[2]
  if type(group) ~= 'string' or group == '' or not is_entry_id(id) then
    return fail('aq_deadletter', 'expected a group and an entry id such as 1700000000000-0')
  end
  local deliveries = whole(args[5] or '0')
  local now = whole(args[6] or '0')
  if not deliveries or deliveries < 0 or not now or now < 0 then
    return fail('aq_deadletter', 'deliveries and now_ms must be non-negative integers')
  end
  local bad = check_type('aq_deadletter', keys[1], 'stream', 'queue')
    or check_type('aq_deadletter', keys[2], 'stream', 'dead-letter')
  if bad then return bad end
  local flat = pending_entry(keys[1], group, id)
  if flat == nil then
    return 0
  end
  if flat == false then
    redis.call('XACK', keys[1], group, id)
    return 0
  end
  local fields = {}
  for i = 1, #flat, 2 do
    -- A message redriven from a DLQ already carries x.* fields: replace them.
    if string.sub(flat[i], 1, #DLQ_PREFIX) ~= DLQ_PREFIX then
      fields[#fields + 1] = flat[i]
      fields[#fields + 1] = flat[i + 1]
    end
  end
  local extra = {'x.id', id, 'x.deliveries', tostring(deliveries), 'x.group', group,
                 'x.consumer', args[3] or '', 'x.error', args[4] or '',
                 'x.time', tostring(now)}
  for _, v in ipairs(extra) do
    fields[#fields + 1] = v
  end
  local res = redis.pcall('XADD', keys[2], '*', unpack(fields))
  if type(res) == 'table' and res['err'] then
    return exhausted('aq_deadletter', keys[2], res['err'])
  end
  redis.call('XACK', keys[1], group, id)
  return 1
end

redis.register_function{function_name='aq_version', callback=aq_version,
                        flags={'no-writes', 'allow-stale'}}
redis.register_function('aq_enqueue', aq_enqueue)
redis.register_function('aq_nack', aq_nack)
redis.register_function('aq_promote', aq_promote)
redis.register_function('aq_deadletter', aq_deadletter)
