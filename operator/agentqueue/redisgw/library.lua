#!lua name=agentqueue
-- The agentqueue Functions library (Redis 7+). Contracts: docs/design.md.
--
-- Every key of one call shares a partition's hash tag, so this works in Redis
-- Cluster. Functions run with the caller's ACL: each redis.call below is checked
-- against the calling user, so a role may only run what its own rules allow.
--
-- The version line is read by redisgw/functions.py; bump it on every change so
-- the operator replaces the library on running servers.
local VERSION = '4'

-- Envelope fields the library manages itself (docs/design.md).
local DLQ_PREFIX = 'x.'
-- Extra key in a retry member: the nacked entry id. Keeps two identical messages
-- that fail alike from collapsing into one sorted-set member (data loss);
-- removed again when the message is promoted.
local RETRY_SRC = 'aq.src'

local function aq_version(keys, args)
  return VERSION
end

-- keys: queue stream [, idempotency key]; args: ttl ms, field, value, ...
-- Returns {id, 0}, or {existing id, 1} when the idempotency key was seen.
local function aq_enqueue(keys, args)
  local nargs = #args
  if nargs < 3 or (nargs - 1) % 2 ~= 0 then
    return redis.error_reply('ERR aq_enqueue: expected ttl_ms then field value pairs')
  end
  local fields = {}
  for i = 2, nargs do
    fields[#fields + 1] = args[i]
  end
  local idem = keys[2]
  if idem then
    local ttl = tonumber(args[1])
    if not ttl or ttl <= 0 then
      return redis.error_reply('ERR aq_enqueue: ttl_ms must be a positive integer')
    end
    local existing = redis.call('GET', idem)
    if existing then
      return {existing, 1}
    end
    local id = redis.call('XADD', keys[1], '*', unpack(fields))
    redis.call('SET', idem, id, 'PX', math.floor(ttl))
    return {id, 0}
  end
  return {redis.call('XADD', keys[1], '*', unpack(fields)), 0}
end

-- XACK first: an entry that is no longer pending for the group was handled by
-- someone else (e.g. reclaimed and acked); retrying or dead-lettering it again
-- would duplicate it. A pending entry that was trimmed or deleted is acked and
-- reported as gone.
local function ack_and_read(stream, group, id)
  if redis.call('XACK', stream, group, id) == 0 then
    return nil
  end
  local entries = redis.call('XRANGE', stream, id, id)
  if #entries == 0 then
    return nil
  end
  return entries[1][2]
end

-- keys: queue stream, retry zset [, stats hash]; args: group, entry id, due ms, error
-- With the stats hash (the partition's aq:{..}:stats), a scheduled retry is counted
-- in its field 'retries' (the retry-rate SLO); callers passing two keys (SDKs older
-- than library version 4) are not counted.
local function aq_nack(keys, args)
  local due = tonumber(args[3])
  if not due then
    return redis.error_reply('ERR aq_nack: due_ms must be a number')
  end
  local flat = ack_and_read(keys[1], args[1], args[2])
  if not flat then
    return 0
  end
  local msg = {}
  for i = 1, #flat, 2 do
    msg[flat[i]] = flat[i + 1]
  end
  msg['a'] = tostring((tonumber(msg['a']) or 0) + 1)
  msg['e'] = args[4] or ''
  msg[RETRY_SRC] = args[2]
  redis.call('ZADD', keys[2], due, cjson.encode(msg))
  if keys[3] then
    redis.call('HINCRBY', keys[3], 'retries', 1)
  end
  return 1
end

-- keys: queue stream, retry zset; args: now ms, limit
local function aq_promote(keys, args)
  local now = tonumber(args[1])
  local limit = tonumber(args[2])
  if not now or not limit or limit < 1 then
    return redis.error_reply('ERR aq_promote: expected now_ms and a positive limit')
  end
  local due = redis.call('ZRANGE', keys[2], '-inf', now, 'BYSCORE', 'LIMIT', 0, limit)
  for _, member in ipairs(due) do
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
          fields[#fields + 1] = k
          fields[#fields + 1] = tostring(v)
        end
      end
    else
      -- Never drop a message: an unreadable member goes back whole, as the payload.
      fields = {'d', member, 'e', 'aq: undecodable retry entry'}
    end
    redis.call('XADD', keys[1], '*', unpack(fields))
    redis.call('ZREM', keys[2], member)
  end
  return #due
end

-- keys: queue stream, dlq stream; args: group, entry id, consumer, error, deliveries, now ms
local function aq_deadletter(keys, args)
  local group, id = args[1], args[2]
  local flat = ack_and_read(keys[1], group, id)
  if not flat then
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
  local extra = {'x.id', id, 'x.deliveries', args[5] or '0', 'x.group', group,
                 'x.consumer', args[3] or '', 'x.error', args[4] or '',
                 'x.time', args[6] or '0'}
  for _, v in ipairs(extra) do
    fields[#fields + 1] = v
  end
  redis.call('XADD', keys[2], '*', unpack(fields))
  return 1
end

redis.register_function{function_name='aq_version', callback=aq_version,
                        flags={'no-writes', 'allow-stale'}}
redis.register_function('aq_enqueue', aq_enqueue)
redis.register_function('aq_nack', aq_nack)
redis.register_function('aq_promote', aq_promote)
redis.register_function('aq_deadletter', aq_deadletter)
