"""
The Lua scripts of the Redis store (L{mqttd.plugins.redis_store}), each run atomically by
Redis: L{APPLY} a batch of journal events, L{CLAIM} and L{CONNECT} the claims that move
sessions between runs, L{STRAYS} the deliveries left for a session's owner.  The keys they use
are listed in the store's docstring and in C{docs/cluster.md}.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred

# Lua helpers both scripts share.  Keys are built in the script from the prefix: mqttd's
# Redis is one server (or a replicated pair), never a Redis Cluster, whose slots would need
# every key named in KEYS.
_COMMON = """
local token, node, p = ARGV[1], ARGV[2], ARGV[3]
-- Messages whose references fell to none (or that were written with none): deleted by sweep
-- at the script's end, so that one referenced again later in the same batch keeps its body.
local unreferenced = {}
local function unref(mid)
  local key = p .. 'message:' .. mid
  if redis.call('HINCRBY', key, 'refs', -1) <= 0 then unreferenced[#unreferenced + 1] = key end
end
local function sweep()
  for _, key in ipairs(unreferenced) do
    local refs = redis.call('HGET', key, 'refs')
    if refs and tonumber(refs) <= 0 then redis.call('DEL', key) end
  end
end
local function ref(mid) redis.call('HINCRBY', p .. 'message:' .. mid, 'refs', 1) end
local function queuedMid(entry) return string.match(entry, '^%d+ %d+ (.+)$') end
local function inflightMid(entry) return string.match(entry, '^%d+ %d+ %d+ %d+ (.+)$') end
-- Forget a session's persistent state (its queue, in-flight deliveries and QoS 2 ids).
local function dropState(cid)
  for _, e in ipairs(redis.call('LRANGE', p .. 'queue:' .. cid, 0, -1)) do unref(queuedMid(e)) end
  for _, e in ipairs(redis.call('HVALS', p .. 'inflight:' .. cid)) do unref(inflightMid(e)) end
  redis.call('DEL', p .. 'queue:' .. cid, p .. 'inflight:' .. cid, p .. 'awaiting:' .. cid,
    p .. 'strays:' .. cid)
end
-- What claims return: per persistent session its client id, subscriptions, owner, expiry
-- interval and deadline, queue, in-flight deliveries and QoS 2 ids; then the bodies of the
-- messages they reference (mid, body, ...).
local sessions, bodies, seen = {}, {}, {}
local function body(mid)
  if not seen[mid] then
    seen[mid] = true
    bodies[#bodies + 1] = mid
    bodies[#bodies + 1] = redis.call('HGET', p .. 'message:' .. mid, 'body') or ''
  end
end
-- Make this run the owner of cid's session; a persistent one's state goes into the reply, its
-- strays (deliveries other runs made to it meanwhile) joining the end of its queue first.
local function take(cid)
  local key = p .. 'session:' .. cid
  local was = redis.call('HMGET', key, 'node', 'fence')
  if was[1] then redis.call('SREM', p .. 'sessions:' .. was[1], cid) end
  if was[2] and was[2] ~= token then
    -- When it left that run: if the run dies, what was on its way to it through the run's
    -- stream from before then is this session's (docs/cluster.md, "Sessions").
    local now = redis.call('TIME')
    redis.call('HSET', p .. 'moved:' .. was[2], cid, now[1] * 1000 + math.floor(now[2] / 1000))
    redis.call('EXPIRE', p .. 'moved:' .. was[2], 86400)
  end
  redis.call('HSET', key, 'fence', token, 'node', node)
  redis.call('HINCRBY', key, 'epoch', 1)
  redis.call('SADD', p .. 'sessions:' .. node, cid)
  if redis.call('HGET', key, 'p') ~= '1' then return end
  local strays = redis.call('LRANGE', p .. 'strays:' .. cid, 0, -1)
  if #strays > 0 then
    redis.call('RPUSH', p .. 'queue:' .. cid, unpack(strays))
    redis.call('DEL', p .. 'strays:' .. cid)
  end
  local s = redis.call('HMGET', key, 'subs', 'owner', 'ei', 'ea')
  local queue = redis.call('LRANGE', p .. 'queue:' .. cid, 0, -1)
  for _, e in ipairs(queue) do body(queuedMid(e)) end
  local inflight = redis.call('HGETALL', p .. 'inflight:' .. cid)
  for j = 2, #inflight, 2 do body(inflightMid(inflight[j])) end
  sessions[#sessions + 1] = {cid, s[1], s[2], s[3], s[4], queue, inflight,
    redis.call('HGETALL', p .. 'awaiting:' .. cid)}
end
"""

# One batch of journal events: ARGV = token, node, prefix, create ('1': a single broker on its
# Redis, where a sessionSaved for a session nobody holds creates it; a cluster node claims
# sessions before it saves them), the batch's number and whether it starts the count, then the
# events, each an opcode and its fixed arguments.
# Returns the client ids whose writes were fenced off, and those given a stray delivery each
# followed by the node that owns it.
APPLY = (
    _COMMON
    + """
local create = ARGV[4] == '1'
-- Each batch once, in order: one sent again after a lost connection (whose answer was lost,
-- or which never arrived) is skipped if Redis had it, and one arriving before an earlier
-- one is refused, to be sent again after it.  ARGV[6] = '1' starts a run's count.
local seq, applied = tonumber(ARGV[5]), p .. 'applied:' .. token
local last = tonumber(redis.call('GET', applied) or '-1')
if ARGV[6] ~= '1' then
  if seq <= last then return {{}, {}} end
  if seq ~= last + 1 then
    return redis.error_reply('MQTTDGAP batch ' .. seq .. ' after ' .. last)
  end
end
redis.call('SET', applied, seq)
-- A single broker finds its wills again under its name when it restarts; a cluster node's are
-- its run's, which a survivor takes when the run dies.
local willsKey = p .. 'wills:' .. (create and node or token)
local owned, fenced, strays = {}, {}, {}
local function owns(cid)
  local ok = owned[cid]
  if ok == nil then
    ok = redis.call('HGET', p .. 'session:' .. cid, 'fence') == token
    owned[cid] = ok
    if not ok then fenced[#fenced + 1] = cid end
  end
  return ok
end
-- A delivery for a persistent session this run no longer owns: kept for its owner, who is
-- told (the node is returned with it) and takes it, or finds it when it claims the session.
local function stray(cid, entry, mid)
  local s = redis.call('HMGET', p .. 'session:' .. cid, 'p', 'node')
  if s[1] == '1' then
    redis.call('RPUSH', p .. 'strays:' .. cid, entry)
    ref(mid)
    strays[#strays + 1] = cid
    strays[#strays + 1] = s[2]
  end
end
local i = 7
local n = #ARGV
while i <= n do
  local op = ARGV[i]
  if op == 'M' then
    local key = p .. 'message:' .. ARGV[i + 1]
    if redis.call('EXISTS', key) == 0 then
      redis.call('HSET', key, 'body', ARGV[i + 2], 'refs', 0)
      unreferenced[#unreferenced + 1] = key
    end
    i = i + 3
  elseif op == 'S' then
    local cid = ARGV[i + 1]
    local key = p .. 'session:' .. cid
    if create and owned[cid] == nil and redis.call('EXISTS', key) == 0 then
      redis.call('HSET', key, 'fence', token, 'node', node, 'ei', 4294967295, 'ea', '', 'seq', 0)
      redis.call('SADD', p .. 'sessions:' .. node, cid)
      owned[cid] = true
    end
    if owns(cid) then
      redis.call('HSET', key, 'subs', ARGV[i + 2], 'p', '1')
      -- A persistent session never expires until told otherwise (3.1.1 never tells).
      redis.call('HSETNX', key, 'ei', 4294967295)
    end
    i = i + 3
  elseif op == 'D' then
    local cid = ARGV[i + 1]
    if owns(cid) then
      dropState(cid)
      if create then
        redis.call('DEL', p .. 'session:' .. cid)
        redis.call('SREM', p .. 'sessions:' .. node, cid)
        owned[cid] = nil
      else
        -- The claim stays, with its owner: this node still holds the client id.
        redis.call('HDEL', p .. 'session:' .. cid, 'p', 'subs', 'ei', 'ea', 'seq')
      end
    end
    i = i + 2
  elseif op == 'O' then
    local cid = ARGV[i + 1]
    if owns(cid) then redis.call('HSET', p .. 'session:' .. cid, 'owner', ARGV[i + 2]) end
    i = i + 3
  elseif op == 'E' then
    if owns(ARGV[i + 1]) then
      redis.call('HSET', p .. 'session:' .. ARGV[i + 1], 'ei', ARGV[i + 2], 'ea', ARGV[i + 3])
    end
    i = i + 4
  elseif op == 'Q' then
    local cid, entry, mid = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    if owns(cid) then
      redis.call('RPUSH', p .. 'queue:' .. cid, entry)
      ref(mid)
    else
      stray(cid, entry, mid)
    end
    i = i + 4
  elseif op == 'P' then
    -- Sent: cid, packet id, state, QoS, retain, mid, queued ('1': it left the queue's head).
    local cid, pid, mid = ARGV[i + 1], ARGV[i + 2], ARGV[i + 6]
    if owns(cid) then
      -- From the queue: that entry (the first like it: the queue's head, unless strays taken
      -- in since joined the broker's queue in another order) carries its reference over.
      -- (The head goes if there is no such entry, keeping the queue as long as the broker's.)
      local entry = ARGV[i + 4] .. ' ' .. ARGV[i + 5] .. ' ' .. mid
      if ARGV[i + 7] ~= '1' then
        ref(mid)
      elseif redis.call('LREM', p .. 'queue:' .. cid, 1, entry) == 0 then
        local head = redis.call('LPOP', p .. 'queue:' .. cid)
        if head then unref(queuedMid(head)) end
        ref(mid)
      end
      local old = redis.call('HGET', p .. 'inflight:' .. cid, pid)
      if old then unref(inflightMid(old)) end
      local seq = redis.call('HINCRBY', p .. 'session:' .. cid, 'seq', 1)
      redis.call('HSET', p .. 'inflight:' .. cid, pid,
        seq .. ' ' .. ARGV[i + 3] .. ' ' .. ARGV[i + 4] .. ' ' .. ARGV[i + 5] .. ' ' .. mid)
    elseif ARGV[i + 7] ~= '1' then
      stray(cid, ARGV[i + 4] .. ' ' .. ARGV[i + 5] .. ' ' .. mid, mid)
    end
    i = i + 8
  elseif op == 'R' then
    local cid, pid = ARGV[i + 1], ARGV[i + 2]
    if owns(cid) then
      local e = redis.call('HGET', p .. 'inflight:' .. cid, pid)
      if e then
        local seq, _, rest = string.match(e, '^(%d+) (%d+) (.+)$')
        redis.call('HSET', p .. 'inflight:' .. cid, pid, seq .. ' 3 ' .. rest)
      end
    end
    i = i + 3
  elseif op == 'A' then
    local cid, pid = ARGV[i + 1], ARGV[i + 2]
    if owns(cid) then
      local e = redis.call('HGET', p .. 'inflight:' .. cid, pid)
      if e then
        unref(inflightMid(e))
        redis.call('HDEL', p .. 'inflight:' .. cid, pid)
      end
    end
    i = i + 3
  elseif op == '2' then
    local cid = ARGV[i + 1]
    if owns(cid) then redis.call('HSET', p .. 'awaiting:' .. cid, ARGV[i + 2], ARGV[i + 3]) end
    i = i + 4
  elseif op == '3' then
    local cid = ARGV[i + 1]
    if owns(cid) then redis.call('HDEL', p .. 'awaiting:' .. cid, ARGV[i + 2]) end
    i = i + 3
  elseif op == 'X' then
    -- Released: the client id is no longer this node's, and no persistent session keeps it.
    local cid = ARGV[i + 1]
    if owns(cid) and redis.call('HGET', p .. 'session:' .. cid, 'p') ~= '1' then
      redis.call('DEL', p .. 'session:' .. cid)
      redis.call('SREM', p .. 'sessions:' .. node, cid)
    end
    i = i + 2
  elseif op == 'G' then
    redis.call('HSET', p .. 'groups', ARGV[i + 1], ARGV[i + 2])
    redis.call('INCR', p .. 'groups:changes')
    i = i + 3
  elseif op == 'g' then
    redis.call('HDEL', p .. 'groups', ARGV[i + 1])
    redis.call('INCR', p .. 'groups:changes')
    i = i + 2
  elseif op == 'W' then
    -- Wills are the node's own record of its connections, not the session's: never fenced.
    redis.call('HSET', willsKey, ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'w' then
    redis.call('HDEL', willsKey, ARGV[i + 1])
    i = i + 2
  elseif op == 'T' then
    redis.call('HSET', p .. 'store:retained', ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 't' then
    redis.call('HDEL', p .. 'store:retained', ARGV[i + 1])
    i = i + 2
  else
    return redis.error_reply('mqttd: unknown store event ' .. op)
  end
end
sweep()
return {fenced, strays}
"""
)

# Claim sessions for this run and return their state (see take): ARGV = token, node, prefix,
# then what to claim: 'node' and a node name (every session the node owns: this node's own at
# start-up, what its last run left), or 'dead', a node name and a run (the sessions that run
# still owns, and its wills, which are taken with them: a run's wills are read once), or
# 'client' and client ids.  What a dead run left of a clean session (a claim with no
# persistent state) is deleted.  Returns the sessions, the message bodies, the wills and, for
# a dead run, the persistent sessions other runs took from it (client id, when in ms on
# Redis's clock, subscriptions).
CLAIM = (
    _COMMON
    + """
local mode, cids, wills = ARGV[4], {}, {}
if mode == 'client' then
  for j = 5, #ARGV do cids[#cids + 1] = ARGV[j] end
else
  for _, cid in ipairs(redis.call('SMEMBERS', p .. 'sessions:' .. ARGV[5])) do
    if mode == 'node' or redis.call('HGET', p .. 'session:' .. cid, 'fence') == ARGV[6] then
      cids[#cids + 1] = cid
    end
  end
end
local moved = {}
if mode == 'dead' then
  wills = redis.call('HGETALL', p .. 'wills:' .. ARGV[6])
  local left = redis.call('HGETALL', p .. 'moved:' .. ARGV[6])
  for j = 1, #left, 2 do
    local subs = redis.call('HGET', p .. 'session:' .. left[j], 'subs')
    if subs then
      moved[#moved + 1] = left[j]
      moved[#moved + 1] = left[j + 1]
      moved[#moved + 1] = subs
    end
  end
  redis.call('DEL', p .. 'wills:' .. ARGV[6], p .. 'moved:' .. ARGV[6],
    p .. 'applied:' .. ARGV[6])
end
for _, cid in ipairs(cids) do
  local key = p .. 'session:' .. cid
  if mode == 'client' or redis.call('HGET', key, 'p') == '1' then
    take(cid)
  else
    dropState(cid)
    redis.call('DEL', key)
    redis.call('SREM', p .. 'sessions:' .. ARGV[5], cid)
  end
end
sweep()
return {sessions, bodies, wills, moved}
"""
)

# A client connects: claim its client id for this run unless a session of another identity
# holds it and the configuration refuses that.  ARGV = token, node, prefix, client id,
# identity, refuse ('1' or '0').  Returns {'refused', owner} or {'taken', the previous fence,
# node and epoch ('' when none held it), the new epoch, the sessions, the bodies}.
CONNECT = (
    _COMMON
    + """
local cid, identity = ARGV[4], ARGV[5]
local key = p .. 'session:' .. cid
local was = redis.call('HMGET', key, 'fence', 'node', 'epoch', 'owner')
if ARGV[6] == '1' and was[4] and was[4] ~= identity then return {'refused', was[4]} end
take(cid)
if not was[4] then redis.call('HSET', key, 'owner', identity) end
sweep()
return {'taken', was[1] or '', was[2] or '', was[3] or '0', redis.call('HGET', key, 'epoch'),
  sessions, bodies}
"""
)

# The owner of a session takes the strays other runs left for it: ARGV = token, node, prefix,
# client id.  They join the end of its queue in Redis and are returned ({entries, bodies}) for
# the broker to add to the session's queue in memory; nothing if the session is not this run's.
STRAYS = (
    _COMMON
    + """
local cid = ARGV[4]
if redis.call('HGET', p .. 'session:' .. cid, 'fence') ~= token then return {{}, {}} end
local strays = redis.call('LRANGE', p .. 'strays:' .. cid, 0, -1)
if #strays == 0 then return {{}, {}} end
redis.call('RPUSH', p .. 'queue:' .. cid, unpack(strays))
redis.call('DEL', p .. 'strays:' .. cid)
for _, e in ipairs(strays) do body(queuedMid(e)) end
return {strays, bodies}
"""
)


class Script:
    """
    A Lua script.  A script run by its SHA-1 that Redis does not know (a Redis restarted since
    it was loaded) fails with NOSCRIPT rather than being sent again in full, which would put
    it behind commands sent after it: the caller loads it (L{load}) and runs it again, in order.
    """

    def __init__(self, text: str) -> None:
        self.text = text.encode()
        self.sha = hashlib.sha1(self.text).hexdigest()

    def load(self, redis: Any) -> Deferred[Any]:
        d: Deferred[Any] = redis.execute_command("SCRIPT", "LOAD", self.text)
        return d

    def run(self, redis: Any, args: Sequence[Any]) -> Deferred[Any]:
        """By its SHA-1: for the journal's batches, sent many times a second."""
        d: Deferred[Any] = redis.execute_command("EVALSHA", self.sha, 0, *args)
        return d

    def runWhole(self, redis: Any, args: Sequence[Any]) -> Deferred[Any]:
        """In full: for claims, which are rarer, and must never wait for a reload."""
        d: Deferred[Any] = redis.execute_command("EVAL", self.text, 0, *args)
        return d


APPLY_SCRIPT = Script(APPLY)
CLAIM_SCRIPT = Script(CLAIM)
CONNECT_SCRIPT = Script(CONNECT)
STRAYS_SCRIPT = Script(STRAYS)
