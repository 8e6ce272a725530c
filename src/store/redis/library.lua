#!lua name=credential_authority_1
-- The Redis backend's server-side half: every call is one function, run
-- atomically by Redis, so a check and its change can never interleave with
-- another replica's. Loaded with FUNCTION LOAD REPLACE at start: functions
-- are persisted and replicated with the data, so a replica promoted after a
-- failover already has them. The library name carries its version: a
-- change of layout is a new name, never a silent reinterpretation.
--
-- Key layout (see keys.rs, which builds the names the Rust side passes):
--   ca:{bXX}:c:<digest>   HASH  one credential (only the token's SHA-256)
--   ca:{bXX}:i:<id>       STRING  credential id -> digest
--   ca:{bXX}:g            HASH  the RevokeAll generations, one copy per bucket
--   ca:g                  HASH  the master copy (names of the count keys)
--   ca:epoch              STRING  RevokeAll's epoch counter
--   ca:t:<h(thread)>      ZSET  the thread's listed credentials in mint order
--   ca:td:<h(thread)>     HASH  the thread's newest death of each caller
--   ca:ic:<h(instance)>   HASH  the callers that claim an instance
--   ca:all:<A>            ZSET  listed credentials, scored by earliest death
--   ca:o:<h(owner)>:<A>:<O>  ZSET  the same, one caller's
--   ca:bytes:<A>, ca:n:..., ca:p:...  counters of the budgets and RevokeAll
-- "Listed" credentials are those the budgets, quotas and thread limits count:
-- a credential is unlisted once, when something finds it dead; its hash stays
-- as a tombstone until its TTL (death + retention) lets Redis reclaim it.
--
-- Time: ARGV[1] is the time in ms, or '' to read Redis's own TIME, so that
-- replicas with skewed clocks agree; tests pass a fake clock's reading.

-- A credential's hash: 'm', what Mint fixed, packed with cmsgpack (one field
-- to find instead of fifteen: a small hash is a list Redis scans, and each
-- field a function reads costs about as much as a GET); 'lu' its latest use;
-- 'dr'/'dt' an explicit revocation's cause and time; 'x' how far its TTL
-- reaches; the listing fields ('st', 'so', 'sa', 'cn', 'cp', 'bk', 'by', 'u').
local PACKED = {'id', 'th', 'in', 'kd', 'ow', 'cr', 'it', 'ml', 'ab', 'ep', 'go', 'gi', 'gp',
                'sc', 'lb'}

local function now_ms(arg)
  if arg ~= nil and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function bucket_of(digest)
  return string.format('%02x', math.floor(tonumber(string.sub(digest, 1, 2), 16) / 4))
end

local function cred_key(digest) return 'ca:{b' .. bucket_of(digest) .. '}:c:' .. digest end
local function id_key(bucket, id) return 'ca:{b' .. bucket .. '}:i:' .. id end
local function gens_key(bucket) return 'ca:{b' .. bucket .. '}:g' end

-- A credential's fields by name, or nil when its key is gone.
local function read(key)
  local v = redis.call('HMGET', key, 'm', 'lu', 'dr', 'dt', 'x')
  if not v[1] then return nil end
  local r = {}
  local packed = {cmsgpack.unpack(v[1])}
  for i, name in ipairs(PACKED) do r[name] = packed[i] end
  r.lu, r.dr, r.dt, r.x = tonumber(v[2]), v[3] or '', v[4] or '', tonumber(v[5] or '0')
  return r
end

-- The deadlines after a latest use at `lu`: the same arithmetic as the
-- embedded store's record.rs.
local function deadlines(r, lu)
  local expires = lu + r.ml
  if r.ab ~= '' then expires = math.min(expires, r.cr + tonumber(r.ab)) end
  return expires, math.min(lu + r.it, expires)
end

-- How many revocations each RevokeAll scope remembers (as the embedded
-- store's revocation.rs HISTORY).
local HISTORY = 256

local CAUSE = {a = 'all', o = 'caller', i = 'provider_instance', p = 'provider_instance'}

-- Why the credential is dead at `now` (reason, since when), or nil. The first
-- death names the reason: a deadline that passed before a RevokeAll keeps its
-- own reason.
local function find_death(r, now, gens)
  if r.dr ~= '' then return r.dr, tonumber(r.dt) end
  local expires = deadlines(r, r.lu)
  local idle = r.lu + r.it
  local died_at = math.min(idle, expires)
  local by_time = 'expired'
  if idle < expires then by_time = 'idle' end
  local g = redis.call('HMGET', gens, 'a', r.go, r.gi, r.gp)
  local first, first_at, cause = nil, nil, nil
  local names = {'a', 'o', 'i', 'p'}
  local fields = {'a', r.go, r.gi, r.gp}
  for i = 1, 4 do
    if tonumber(g[i] or '0') > r.ep then
      -- The scope's first revocation after the mint, by a binary search of
      -- its history (epochs grow with k); the oldest remembered one if the
      -- first has been forgotten.
      local field = fields[i]
      local newest = tonumber(redis.call('HGET', gens, field .. '#'))
      local lo, hi = math.max(1, newest - HISTORY + 1), newest
      while lo < hi do
        local mid = math.floor((lo + hi) / 2)
        local at = redis.call('HGET', gens, field .. '#' .. mid)
        if tonumber(string.match(at, '^(%d+)')) > r.ep then hi = mid else lo = mid + 1 end
      end
      local stamp = redis.call('HGET', gens, field .. '#' .. lo)
      local epoch, at = string.match(stamp, '^(%d+):(%d+)$')
      epoch, at = tonumber(epoch), tonumber(at)
      if first == nil or epoch < first then
        first, first_at, cause = epoch, at, CAUSE[names[i]]
      end
    end
  end
  if first ~= nil then
    if now >= died_at and died_at <= first_at then return by_time, died_at end
    return cause, first_at
  end
  if now >= died_at then return by_time, died_at end
  return nil
end

-- Remembers the thread's newest death (by mint time) of each caller, for
-- Touch by thread: a caller sees the newest death of its own credentials.
local function thread_death(tomb, r, reason, retention)
  local known = redis.call('HGET', tomb, r.ow)
  if not known or cmsgpack.unpack(known) <= r.cr then
    redis.call('HSET', tomb, r.ow, cmsgpack.pack(r.cr, reason, r.id))
  end
  redis.call('PEXPIRE', tomb, retention)
end

-- Why the credential is dead, as find_death says; a death found is written
-- down (cause and time, as an explicit revocation is), so that it is final
-- even if Redis's clock steps back (NTP, a failover to a replica whose clock
-- is behind): a credential that died never works again.
local function death(r, now, gens, key)
  local reason, since = find_death(r, now, gens)
  if reason and r.dr == '' then
    redis.call('HSET', key, 'dr', reason, 'dt', since)
    r.dr, r.dt = reason, tostring(since)
  end
  return reason, since
end

-- Takes a dead credential out of the thread, the quotas and the budgets,
-- once, and records it as its thread's newest death of its caller (as the
-- embedded store's removals do, whatever removes it).
local function unlist(key, digest, r, reason, retention)
  local l = redis.call('HMGET', key, 'u', 'st', 'so', 'sa', 'cn', 'cp', 'bk', 'by')
  if l[1] == '1' or not l[2] then return end
  thread_death('ca:td:' .. string.sub(l[2], 6), r, reason, retention)
  redis.call('ZREM', l[2], digest)
  redis.call('ZREM', l[3], digest)
  redis.call('ZREM', l[4], digest)
  redis.call('ZREM', l[6], digest)
  if redis.call('DECR', l[5]) <= 0 then redis.call('DEL', l[5]) end
  if redis.call('DECRBY', l[7], tonumber(l[8])) <= 0 then redis.call('DEL', l[7]) end
  redis.call('HSET', key, 'u', '1')
end

-- Ends a live credential by an explicit revocation (credential, thread,
-- replaced): its hash becomes a tombstone for `retention`.
local function revoke(key, digest, r, cause, now, retention)
  redis.call('HSET', key, 'dr', cause, 'dt', now)
  redis.call('PEXPIRE', key, retention)
  redis.call('PEXPIRE', id_key(bucket_of(digest), r.id), retention)
  unlist(key, digest, r, cause, retention)
end

-- How much longer than needed a renewal sets the TTL, so that most renewals
-- write only the latest use and not two expiries.
local TTL_SLACK = 600000

local function renew(key, digest, r, now, retention)
  local lu = r.lu
  if now > lu then lu = now end
  local expires, idle = deadlines(r, lu)
  local needed = idle + retention
  if needed > r.x then
    local x = needed + TTL_SLACK
    redis.call('HSET', key, 'lu', lu, 'x', x)
    redis.call('PEXPIRE', key, x - now)
    redis.call('PEXPIRE', id_key(bucket_of(digest), r.id), x - now)
  elseif lu > r.lu then
    redis.call('HSET', key, 'lu', lu)
  end
  return expires, idle
end

local function covers(reach, owner) return reach == '' or reach == owner end

-- The answer for a dead credential, or 'U' once its tombstone has aged out.
local function dead_reply(r, reason, since, now, retention)
  if since + retention <= now then return {'U'} end
  return {'D', reason, r.id, r.th, r.ow}
end


-- KEYS: credential, its bucket's generations.
-- ARGV: now, required scope ('' for none), tombstone retention ms.
local function resolve(keys, args)
  -- The hot path, written out: one read of the record, one of its four
  -- generations, one write of the latest use; no table but the reply.
  local key = keys[1]
  local v = redis.call('HMGET', key, 'm', 'lu', 'dr', 'x')
  if not v[1] then return {'U'} end
  local now, scope, retention = now_ms(args[1]), args[2], tonumber(args[3])
  local id, th, inst, kd, ow, cr, it, ml, ab, ep, go, gi, gp, sc, lb = cmsgpack.unpack(v[1])
  local lu = tonumber(v[2])
  if v[3] then
    local r = read(key)
    return dead_reply(r, r.dr, tonumber(r.dt), now, retention)
  end
  local expires = lu + ml
  if ab ~= '' then expires = math.min(expires, cr + tonumber(ab)) end
  local idle = lu + it
  local g = redis.call('HMGET', keys[2], 'a', go, gi, gp)
  if now >= math.min(idle, expires) or tonumber(g[1] or '0') > ep or tonumber(g[2] or '0') > ep
      or tonumber(g[3] or '0') > ep or tonumber(g[4] or '0') > ep then
    local r = read(key)
    local reason, since = death(r, now, keys[2], key)
    if reason then return dead_reply(r, reason, since, now, retention) end
  end
  if scope ~= '' and not string.find('\n' .. sc .. '\n', '\n' .. scope .. '\n', 1, true) then
    return {'S', id, th}
  end
  if now > lu then
    lu = now
    expires = lu + ml
    if ab ~= '' then expires = math.min(expires, cr + tonumber(ab)) end
  end
  idle = math.min(lu + it, expires)
  local needed = idle + retention
  local x = tonumber(v[4])
  if needed > x then
    x = needed + TTL_SLACK
    redis.call('HSET', key, 'lu', lu, 'x', x)
    redis.call('PEXPIRE', key, x - now)
    redis.call('PEXPIRE', id_key(bucket_of(string.sub(key, -64)), id), x - now)
  elseif lu > tonumber(v[2]) then
    redis.call('HSET', key, 'lu', lu)
  end
  return {'L', id, th, inst, kd, ow, cr, expires, idle, sc, lb}
end

-- Checks up to `limit` listed credentials of `set` whose earliest death is
-- due: the dead are unlisted, the live rescored by their next deadline.
-- Checks one listed credential of `set`: gone, it leaves the set; dead, it
-- is unlisted. Returns the record when it is live.
local function settle_listed(set, digest, now, retention)
  local key = cred_key(digest)
  local r = read(key)
  if not r then
    redis.call('ZREM', set, digest)
    return nil
  end
  local reason = death(r, now, gens_key(bucket_of(digest)), key)
  if reason then
    unlist(key, digest, r, reason, retention)
    return nil
  end
  return r
end

local function prune_due(set, now, limit, retention)
  local due = redis.call('ZRANGE', set, '-inf', now, 'BYSCORE', 'LIMIT', 0, limit)
  for _, digest in ipairs(due) do
    local r = settle_listed(set, digest, now, retention)
    if r then
      local _, idle = deadlines(r, r.lu)
      redis.call('ZADD', set, idle, digest)
    end
  end
  return #due
end

local function master_gen(name)
  return redis.call('HGET', 'ca:g', name) or '0'
end

-- The names of the count keys a credential of (owner, instance) joins now.
local function count_keys(ho, hi)
  local a, o = master_gen('a'), master_gen('o:' .. ho)
  local i, p = master_gen('i:' .. hi), master_gen('p:' .. ho .. ':' .. hi)
  return {
    all = 'ca:all:' .. a,
    bytes = 'ca:bytes:' .. a,
    owner = 'ca:o:' .. ho .. ':' .. a .. ':' .. o,
    inst = 'ca:n:' .. hi .. ':' .. a .. ':' .. i,
    pair = 'ca:p:' .. ho .. ':' .. hi .. ':' .. a .. ':' .. o .. ':' .. i .. ':' .. p,
  }
end

-- How many of a caller's listed credentials a Mint at its quota checks:
-- bounded, so a caller Minting at its quota cannot keep Redis busy (beyond
-- it, credentials ended early by an instance's RevokeAll still count until
-- the pruner finds them).
local QUOTA_SCAN = 256

-- KEYS: credential, id key, bucket generations, thread set, thread tomb,
-- instance claims.
-- ARGV: now, id, thread, instance, kind, owner, reach, idle ms, max lifetime
-- ms, absolute ms or '', scopes, labels, bytes, replace (0/1), thread limit,
-- owner quota or '', max credentials, max bytes, retention ms, h(owner),
-- h(instance), claims (0/1).
local function mint(keys, a)
  local key, idkey, gens, thread, tomb, claims = keys[1], keys[2], keys[3], keys[4], keys[5], keys[6]
  local now = now_ms(a[1])
  local id, owner, reach, inst = a[2], a[6], a[7], a[4]
  local bytes, replace = tonumber(a[13]), a[14] == '1'
  local thread_limit, quota = tonumber(a[15]), a[16]
  local max_creds, max_bytes, retention = tonumber(a[17]), tonumber(a[18]), tonumber(a[19])
  local ho, hi = a[20], a[21]
  if redis.call('EXISTS', key) == 1 then return {'E', 'digest taken'} end
  -- An instance belongs to the caller that first mints for it while that
  -- caller holds credentials of it (an admin's Mint claims nothing).
  local claimants = redis.call('HKEYS', claims)
  for _, other in ipairs(claimants) do
    if other ~= ho then
      local other_owner = redis.call('HGET', claims, other)
      local held = count_keys(other, hi).pair
      prune_due(held, now, 64, retention)
      if redis.call('ZCARD', held) == 0 then
        redis.call('HDEL', claims, other)
      elseif not covers(reach, other_owner) then
        return {'N'}
      end
    end
  end
  -- The thread: its live credentials, and those this Mint replaces.
  local replaced, replaced_mine, replaced_bytes = {}, 0, 0
  local live = redis.call('ZCARD', thread)
  if replace or live >= thread_limit then
    live = 0
    for _, digest in ipairs(redis.call('ZRANGE', thread, 0, -1)) do
      local ckey = cred_key(digest)
      local r = read(ckey)
      if not r then
        redis.call('ZREM', thread, digest)
      else
        local reason = death(r, now, gens_key(bucket_of(digest)), ckey)
        if reason then
          unlist(ckey, digest, r, reason, retention)
        else
          live = live + 1
          if replace and r['in'] == inst then
            if not covers(reach, r.ow) then return {'N'} end
            table.insert(replaced, {ckey, digest, r})
            if r.ow == owner then replaced_mine = replaced_mine + 1 end
            replaced_bytes = replaced_bytes + tonumber(redis.call('HGET', ckey, 'by'))
          end
        end
      end
    end
  end
  if live - #replaced >= thread_limit then return {'T', thread_limit} end
  local counts = count_keys(ho, hi)
  if quota ~= '' then
    prune_due(counts.owner, now, 64, retention)
    local held = redis.call('ZCARD', counts.owner) - replaced_mine
    if held >= tonumber(quota) then
      -- At the quota: look at every listed credential of the caller, not
      -- only those due (a RevokeAll of an instance ends some early).
      for _, digest in ipairs(redis.call('ZRANGE', counts.owner, 0, QUOTA_SCAN - 1)) do
        settle_listed(counts.owner, digest, now, retention)
      end
      held = redis.call('ZCARD', counts.owner) - replaced_mine
      if held >= tonumber(quota) then return {'Q', quota} end
    end
  end
  prune_due(counts.all, now, 16, retention)
  local held = redis.call('ZCARD', counts.all) - #replaced
  if held + 1 > max_creds then return {'B', 'credentials', max_creds} end
  local held_bytes = tonumber(redis.call('GET', counts.bytes) or '0') - replaced_bytes
  if held_bytes + bytes > max_bytes then return {'B', 'bytes', max_bytes} end
  -- The commit: nothing below refuses. The replaced go first, so the old and
  -- new credentials never both work.
  for _, old in ipairs(replaced) do
    revoke(old[1], old[2], old[3], 'replaced', now, retention)
  end
  local digest = string.sub(key, -64)
  local epoch = redis.call('HGET', gens, 'n') or '0'
  local r = {lu = now, cr = now, it = tonumber(a[8]), ml = tonumber(a[9]), ab = a[10]}
  local expires, idle = deadlines(r, now)
  local ttl = idle - now + retention + TTL_SLACK
  local packed = cmsgpack.pack(id, a[3], inst, a[5], owner, now, r.it, r.ml, a[10],
                               tonumber(epoch), 'o:' .. ho, 'i:' .. hi, 'p:' .. ho .. ':' .. hi,
                               a[11], a[12])
  redis.call('HSET', key, 'm', packed, 'lu', now, 'x', now + ttl, 'st', thread,
             'so', counts.owner, 'sa', counts.all, 'cn', counts.inst, 'cp', counts.pair,
             'bk', counts.bytes, 'by', bytes)
  redis.call('PEXPIRE', key, ttl)
  redis.call('SET', idkey, digest, 'PX', ttl)
  -- Scored in mint order (Touch lists oldest first), Mints of the same
  -- millisecond included.
  local order = now * 1024
  local newest = redis.call('ZRANGE', thread, -1, -1, 'WITHSCORES')
  if newest[2] and tonumber(newest[2]) >= order then order = tonumber(newest[2]) + 1 end
  redis.call('ZADD', thread, order, digest)
  redis.call('ZADD', counts.owner, idle, digest)
  redis.call('ZADD', counts.all, idle, digest)
  redis.call('INCRBY', counts.bytes, bytes)
  redis.call('INCR', counts.inst)
  redis.call('ZADD', counts.pair, idle, digest)
  if a[22] == '1' then redis.call('HSET', claims, ho, owner) end
  return {'OK', now, expires, idle, #replaced}
end

-- The credential an id names: its key, digest and fields, or nil.
local function by_id(idkey)
  local digest = redis.call('GET', idkey)
  if not digest then return nil end
  local key = cred_key(digest)
  local r = read(key)
  if not r then return nil end
  return key, digest, r
end

-- KEYS: id key. ARGV: now, reach, retention.
local function touch_credential(keys, a)
  local now, reach, retention = now_ms(a[1]), a[2], tonumber(a[3])
  local key, digest, r = by_id(keys[1])
  if not key then return {'U'} end
  if not covers(reach, r.ow) then return {'N'} end
  local reason, since = death(r, now, gens_key(bucket_of(digest)), key)
  if reason then return dead_reply(r, reason, since, now, retention) end
  local expires, idle = renew(key, digest, r, now, retention)
  return {'L', r.id, expires, idle}
end

-- KEYS: id key. ARGV: now, reach, retention.
local function revoke_credential(keys, a)
  local now, reach, retention = now_ms(a[1]), a[2], tonumber(a[3])
  local key, digest, r = by_id(keys[1])
  if not key then return {'U'} end
  if not covers(reach, r.ow) then return {'N'} end
  local reason, since = death(r, now, gens_key(bucket_of(digest)), key)
  if reason then
    unlist(key, digest, r, reason, retention)
    if since + retention <= now then return {'U'} end
    return {'0', r.th}
  end
  revoke(key, digest, r, 'credential', now, retention)
  return {'1', r.th, r['in']}
end

-- KEYS: thread set, thread tomb. ARGV: now, reach, retention, reply limit,
-- mode ('touch' or 'revoke').
local function thread_call(keys, a)
  local thread, tomb = keys[1], keys[2]
  local now, reach, retention, limit, mode = now_ms(a[1]), a[2], tonumber(a[3]),
      tonumber(a[4]), a[5]
  local touched, total, revoked, not_owned, out_of_reach_live = {}, 0, 0, 0, false
  local newest_death = nil
  for _, digest in ipairs(redis.call('ZRANGE', thread, 0, -1)) do
    local key = cred_key(digest)
    local r = read(key)
    if not r then
      redis.call('ZREM', thread, digest)
    else
      local reason, since = death(r, now, gens_key(bucket_of(digest)), key)
      if not covers(reach, r.ow) then
        if not reason then
          not_owned = not_owned + 1
          out_of_reach_live = true
        end
      elseif reason then
        unlist(key, digest, r, reason, retention)
        if since + retention > now then newest_death = {r.cr, reason, r.id, r.th, r.ow} end
      elseif mode == 'revoke' then
        revoke(key, digest, r, 'thread', now, retention)
        revoked = revoked + 1
      else
        local expires, idle = renew(key, digest, r, now, retention)
        total = total + 1
        if #touched < limit * 3 then
          table.insert(touched, r.id)
          table.insert(touched, expires)
          table.insert(touched, idle)
        end
      end
    end
  end
  if mode == 'revoke' then return {'R', revoked, not_owned} end
  if total > 0 then return {'L', total, touched} end
  if out_of_reach_live then return {'N'} end
  local deaths = redis.call('HGETALL', tomb)
  local best = nil
  for i = 1, #deaths, 2 do
    if covers(reach, deaths[i]) then
      local cr, rs, id = cmsgpack.unpack(deaths[i + 1])
      if best == nil or cr >= best[1] then best = {cr, rs, id, deaths[i]} end
    end
  end
  if best and (newest_death == nil or best[1] > newest_death[1]) then
    return {'D', best[2], best[3], '', best[4]}
  end
  if newest_death then
    return {'D', newest_death[2], newest_death[3], newest_death[4], newest_death[5]}
  end
  return {'U'}
end

-- KEYS: the master generations, then every bucket's copy.
-- ARGV: now, scope kind ('a' everything, 'o' a caller, 'i' an instance,
-- 'p' a caller's instance), h(owner) or '', h(instance) or '', retention ms.
-- Writes every copy before it returns: constant time in the number of
-- credentials, linear in the fixed number of buckets. Answers how many
-- listed credentials the scope held: an upper bound of the live ones it
-- ended (one that died unnoticed is listed until the pruner finds it).
local function revoke_all(keys, a)
  local now, kind, ho, hi, retention = now_ms(a[1]), a[2], a[3], a[4], tonumber(a[5])
  local counts = count_keys(ho, hi)
  local field, count
  if kind == 'a' then
    field = 'a'
    prune_due(counts.all, now, 256, retention)
    count = redis.call('ZCARD', counts.all)
  elseif kind == 'o' then
    field = 'o:' .. ho
    prune_due(counts.owner, now, 256, retention)
    count = redis.call('ZCARD', counts.owner)
  elseif kind == 'i' then
    field = 'i:' .. hi
    count = tonumber(redis.call('GET', counts.inst) or '0')
  else
    field = 'p:' .. ho .. ':' .. hi
    prune_due(counts.pair, now, 256, retention)
    count = redis.call('ZCARD', counts.pair)
  end
  local epoch = redis.call('INCR', 'ca:epoch')
  for i = 1, #keys do
    local g = keys[i]
    -- Set-if-greater, and the scope's history: one field per revocation
    -- ('<field>#<k>' = 'epoch:time', k counted in '<field>#'), the oldest
    -- beyond HISTORY dropped, so that a credential's first revocation after
    -- its mint names the cause and time; constant work per copy.
    local known = redis.call('HMGET', g, field, 'n', field .. '#')
    if tonumber(known[1] or '0') < epoch then
      local k = tonumber(known[3] or '0') + 1
      redis.call('HSET', g, field, epoch, field .. '#', k, field .. '#' .. k, epoch .. ':' .. now)
      if k > HISTORY then redis.call('HDEL', g, field .. '#' .. (k - HISTORY)) end
    end
    if tonumber(known[2] or '0') < epoch then redis.call('HSET', g, 'n', epoch) end
  end
  if kind == 'a' then
    -- The whole listing is dead: the pruner empties it in the background.
    redis.call('RPUSH', 'ca:dead-lists', counts.all)
  end
  return {count, epoch}
end

-- Background pruning, as the embedded store's sweeper: unlists what died.
-- ARGV: now, how many at most, retention ms.
local function prune(keys, a)
  local now, limit, retention = now_ms(a[1]), tonumber(a[2]), tonumber(a[3])
  local done = 0
  local old = redis.call('LINDEX', 'ca:dead-lists', 0)
  if old then
    local popped = redis.call('ZPOPMIN', old, limit)
    for i = 1, #popped, 2 do
      local digest = popped[i]
      local key = cred_key(digest)
      local r = read(key)
      if r then
        unlist(key, digest, r, death(r, now, gens_key(bucket_of(digest)), key) or 'all', retention)
      end
    end
    done = #popped / 2
    if redis.call('EXISTS', old) == 0 then redis.call('LPOP', 'ca:dead-lists') end
  end
  return done + prune_due('ca:all:' .. master_gen('a'), now, limit, retention)
end

-- Function names carry the library's version, as its name does, so that a
-- new version can be loaded beside the old during a rolling upgrade, and a
-- build never calls functions of another layout. The revocations and
-- Resolve may run when Redis is at maxmemory (`allow-oom`): a revocation
-- must never be refused for memory, and they write no more than they free.
redis.register_function{function_name = 'ca1_resolve', callback = resolve, flags = {'allow-oom'}}
redis.register_function{function_name = 'ca1_mint', callback = mint, flags = {'no-cluster'}}
redis.register_function{function_name = 'ca1_touch_credential', callback = touch_credential,
                        flags = {'no-cluster'}}
redis.register_function{function_name = 'ca1_revoke_credential', callback = revoke_credential,
                        flags = {'no-cluster', 'allow-oom'}}
redis.register_function{function_name = 'ca1_thread', callback = thread_call,
                        flags = {'no-cluster', 'allow-oom'}}
redis.register_function{function_name = 'ca1_revoke_all', callback = revoke_all,
                        flags = {'no-cluster', 'allow-oom'}}
redis.register_function{function_name = 'ca1_prune', callback = prune,
                        flags = {'no-cluster', 'allow-oom'}}
