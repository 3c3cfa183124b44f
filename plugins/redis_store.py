"""
The Redis L{IMessageStore} (C{[store] plugin = redis}): persistent sessions, retained messages
and wills in a Redis server, so that a session outlives the node that held it and a cluster's
nodes (C{docs/cluster.md}) can hand it to one another.

The journal's events are recorded on the reactor thread and sent as one C{EVALSHA} of
L{APPLY} per batch, on one connection, so Redis applies them in the broker's order and each
batch as a whole (a Lua script is atomic, and Redis writes its effects to the append-only file
as one transaction).  In C{sync} mode a batch goes at the end of the reactor turn that recorded
it and L{RedisStore.flush} fires once Redis has answered it; with C{appendfsync always} Redis
answers only after the change is on disk, which is the SQLite store's guarantee.  Batches are
pipelined: the next goes before the one before has been answered, Redis keeping their order.

Every session's key carries a fencing token, C{fence}: the run of the node that owns it
(L{RedisStore.token}, new for each process).  A write to a session is applied only while the
fence is this run's, checked in the same script, so a node that lost a session (taken over by
another node, or its owner thought dead) can never overwrite it.  A delivery to a session this
run no longer owns is kept in the session's queue in Redis instead (a stray), so the node that
owns it now delivers it: a message acknowledged to its publisher is never dropped by the fence.

Options (C{[plugin:redis]}):
  - C{url}: C{redis://[:PASSWORD@]HOST[:PORT][/DB]}; default C{redis://127.0.0.1:6379/0}.
  - C{prefix}: what every key starts with; default C{mqttd:}.
  - C{node}: the name this broker's sessions and wills are kept under; default C{mqttd}.  A
    cluster's nodes each have their own (C{[cluster] node}).
  - C{durability}, C{flush_ms}: as for the SQLite store.

The keys, for a prefix C{P}, node C{N} and client identifier C{C} (C{docs/cluster.md} has
them with their owners and lifetimes):
  - C{Psession:C}, hash: the session's claim (C{fence}, C{node}) and, for a persistent session
    (C{p} = 1), C{subs} (JSON), C{owner}, C{ei} and C{ea} (Session Expiry Interval and
    deadline), C{seq} (orders the in-flight deliveries).
  - C{Pqueue:C}, list: queued deliveries, C{"QOS RETAIN MID"}, oldest first.
  - C{Pinflight:C}, hash: in-flight deliveries by packet identifier, C{"SEQ STATE QOS RETAIN
    MID"}.
  - C{Pawaiting:C}, hash: inbound QoS 2 packet identifiers awaiting PUBREL, to when they came.
  - C{Pmessage:MID}, hash: a message (C{body}, see L{encodeMessage}) and how many deliveries
    reference it (C{refs}); deleted with its last reference.
  - C{Pstrays:C}, list, as the queue: deliveries another run made to the session after it
    lost it, for its owner to take.
  - C{Psessions:N}, set: the client identifiers whose sessions node C{N} owns.
  - C{Pmoved:RUN}, hash: the sessions other runs took from run C{RUN}, and when.
  - C{Papplied:RUN}, string: the number of run C{RUN}'s last batch applied.
  - C{Pwills:N}, hash: the wills of node C{N}'s open connections, by client identifier (in a
    cluster, C{N} is the node's run, L{RedisStore.token}).
  - C{Pgroups}, hash: virtual groups by name (L{dumpGroup}); C{Pgroups:changes}, a count
    every change adds one to, which each broker polls.
  - C{Pstore:retained}, hash: a single broker's retained messages by topic (a cluster keeps
    them in C{Pretained}, L{mqttd.cluster}'s).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from mqttd.codec.packets import Will
from mqttd.durable import durabilityOptions
from mqttd.groupinbox import dumpSettings, withSettings
from mqttd.interfaces import (
    Group,
    IGroupStore,
    IMessageStore,
    IPluginFactory,
    PluginConfigError,
    PluginContext,
)
from mqttd.message import Message
from mqttd.session import SessionState
from mqttd.store import StoredSession, StoredState, dumpProperties, loadProperties, storedMessage

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "mqttd:"
DEFAULT_NODE = "mqttd"

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


def encodeMessage(message: Message) -> bytes:
    """
    A message as Redis keeps it: a JSON header (topic, QoS, retain, what L{dumpProperties}
    keeps of its properties, its expiry deadline), a newline (JSON text has none), the payload.
    """
    header = [
        message.topic,
        message.qos,
        message.retain,
        dumpProperties(message.properties),
        message.expiresAt,
    ]
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + message.payload


def decodeMessage(body: bytes) -> Message:
    """The message L{encodeMessage} made C{body} of."""
    header, _, payload = body.partition(b"\n")
    topic, qos, retain, properties, expiresAt = json.loads(header)
    return storedMessage(topic, payload, qos, retain, properties, expiresAt)


def encodeWill(will: Will) -> bytes:
    """A will as Redis keeps it, in L{encodeMessage}'s form."""
    header = [will.topic, will.qos, will.retain, dumpProperties(will.properties)]
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + will.payload


def decodeWill(body: bytes) -> Will:
    """The will L{encodeWill} made C{body} of."""
    header, _, payload = body.partition(b"\n")
    topic, qos, retain, properties = json.loads(header)
    return Will(topic, payload, qos, bool(retain), loadProperties(properties))


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _messages(rawBodies: Sequence[bytes]) -> dict[bytes, Message]:
    messages: dict[bytes, Message] = {}
    for j in range(0, len(rawBodies), 2):
        mid = rawBodies[j]
        message = messages[mid] = decodeMessage(rawBodies[j + 1])
        message.storeId = int(mid)
    return messages


def _deliveries(
    entries: Sequence[bytes], messages: Mapping[bytes, Message]
) -> list[tuple[Message, int, bool]]:
    deliveries = []
    for entry in entries:
        qos, retain, mid = entry.split(b" ", 2)
        deliveries.append((messages[mid], int(qos), retain == b"1"))
    return deliveries


def claimedSessions(rawSessions: Sequence[Any], rawBodies: Sequence[bytes]) -> list[SessionState]:
    """The L{SessionState}s a claim (L{CLAIM}, L{CONNECT}) returned."""
    messages = _messages(rawBodies)
    states: list[SessionState] = []
    for cid, subs, owner, ei, ea, queue, inflight, awaiting in rawSessions:
        stored = StoredSession(json.loads(subs) if subs else {})
        stored.owner = _text(owner)
        stored.expiryInterval = int(ei)
        stored.expiresAt = float(ea) if ea else None
        stored.queue.extend(_deliveries(queue, messages))
        sent = []
        for j in range(0, len(inflight), 2):
            seq, state, qos, retain, mid = inflight[j + 1].split(b" ", 4)
            sent.append(
                (int(seq), int(inflight[j]), messages[mid], int(qos), retain == b"1", state)
            )
        for _, packetId, message, qos, retain, state in sorted(sent, key=lambda s: s[0]):
            stored.inflight[packetId] = [message, qos, retain, int(state)]
        for j in range(0, len(awaiting), 2):
            stored.awaitingRel[int(awaiting[j])] = float(awaiting[j + 1])
        states.append(stored.state(cid.decode()))
    return states


def dumpGroup(group: Group) -> str:
    """A virtual group as Redis keeps it: JSON."""
    return json.dumps(
        {
            "members": dict(group.members),
            "byUsername": group.byUsername,
            "topic": group.topic,
            "echo": group.echo,
            "settings": dumpSettings(group),
        },
        separators=(",", ":"),
    )


def loadGroup(name: str, text: bytes) -> Group:
    """The group L{dumpGroup} wrote as C{text}."""
    fields = json.loads(text)
    group = Group(name, fields["members"], fields["byUsername"], fields["topic"], fields["echo"])
    return withSettings(group, fields["settings"])


def _wills(reply: Sequence[bytes]) -> dict[str, Will]:
    return {reply[j].decode(): decodeWill(reply[j + 1]) for j in range(0, len(reply), 2)}


def _flag(value: bool) -> bytes:
    return b"1" if value else b"0"


class _Script:
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


_APPLY = _Script(APPLY)
_CLAIM = _Script(CLAIM)
_CONNECT = _Script(CONNECT)
_STRAYS = _Script(STRAYS)


# Seconds before the batches a lost connection left unanswered are sent again (they wait, in
# the connection's queue, for it to come back).
RETRY_DELAY = 0.1
# Seconds a closing store waits for Redis to answer what it was sent.
CLOSE_TIMEOUT = 5.0


class _Batch:
    """One EVALSHA of L{APPLY}: its arguments and who waits for its answer."""

    __slots__ = ("args", "waiters")

    def __init__(self, args: list[Any], waiters: list[Deferred[None]]) -> None:
        self.args = args
        self.waiters = waiters


def _retried(failure: Failure) -> bool:
    """
    Whether a batch that failed so is sent again: a lost connection, one out of order, a
    Redis that lost the script or is still loading its data (restarted).
    """
    import txredisapi

    if failure.check(txredisapi.ConnectionError):
        return True
    # A Redis loading its append-only file after a restart answers LOADING for a while.
    return str(failure.value).startswith(("MQTTDGAP", "NOSCRIPT", "LOADING", "BUSY"))


@dataclass(frozen=True, slots=True)
class Adopted:
    """
    What a dead run left (L{RedisStore.adopt}).

    @ivar state: its persistent sessions, now this run's, and its wills.
    @ivar moved: the persistent sessions other runs took from it, by client id: when (in
        milliseconds, Redis's clock) and their subscriptions.
    """

    state: StoredState
    moved: dict[str, tuple[int, dict[str, int]]]


@dataclass(frozen=True, slots=True)
class Claimed:
    """
    What claiming a connecting client's id found (L{RedisStore.claimClient}).

    @ivar refusedBy: the identity whose session refused the claim, or L{None} if it was made.
    @ivar fence: the run that held the client id before, C{""} when none did.
    @ivar node: that run's node.
    @ivar epoch: how many claims the client id had seen before this one; the run that lost it
        is told, so that it ignores a late word about an older claim.
    @ivar sessions: the persistent session claimed with it, if there is one.
    """

    refusedBy: str | None
    fence: str = ""
    node: str = ""
    epoch: int = 0
    sessions: list[SessionState] = field(default_factory=list)


def connect(url: str) -> Any:
    """
    A txredisapi connection to C{url} that reconnects by itself, speaking bytes (payloads are
    binary); imported here so that nothing Redis-related is loaded without a Redis store.
    """
    import txredisapi

    parts = urlsplit(url)
    db = parts.path.strip("/")
    return txredisapi.lazyConnection(
        parts.hostname or "127.0.0.1",
        parts.port or 6379,
        dbid=int(db) if db else None,
        password=unquote(parts.password) if parts.password else None,
        charset=None,
        convertNumbers=False,
    )


def parseURL(url: str) -> str:
    """
    Check a C{redis://} URL.

    @raise PluginConfigError: naming C{url}, when it is not one.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises for a port that is not a number
    except ValueError as e:
        raise PluginConfigError("url", f"{url!r}: {e}") from None
    db = parts.path.strip("/")
    if parts.scheme != "redis" or not parts.hostname or (db and not db.isdigit()):
        raise PluginConfigError("url", f"expected redis://HOST[:PORT][/DB], got {url!r}")
    return url


@implementer(IMessageStore, IGroupStore)
class RedisStore:
    """
    L{IMessageStore} in Redis.

    @ivar token: this run's fencing token: the C{fence} of every session it owns.
    @ivar fenced: called with the client ids of sessions whose writes were refused because
        another run owns them now, and the C{(client id, owner node)} of those given a stray
        delivery; L{None} to only log.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        connect: Callable[[], Any],
        *,
        prefix: str = DEFAULT_PREFIX,
        node: str = DEFAULT_NODE,
        sync: bool = True,
        flushInterval: float = 0.05,
        clustered: bool = False,
        token: Callable[[], str] | None = None,
        disconnect: Callable[[Any], Deferred[Any]] | None = None,
        groupPollInterval: float = 1.0,
    ) -> None:
        """
        @param connect: makes the txredisapi connection (L{connect}), at L{restore}: the
            broker's start, after twistd's fork into the background.
        @param clustered: whether this is a cluster node, whose session registry claims each
            session before saving it (L{claimClient}), whose retained messages the cluster
            keeps, and whose last run's wills a survivor takes (L{adopt}); otherwise this
            broker creates the sessions it saves and keeps everything here.
        @param token: gives this run's fencing token: a cluster node's incarnation, which
            changes when the others buried it during a pause; by default one drawn here.
        @param disconnect: closes the connection, at L{close}; by default its C{disconnect}.
        @param groupPollInterval: seconds between looks for virtual groups other brokers
            changed.
        """
        self._reactor = reactor
        self._connect = connect
        self.redis: Any = None
        self.prefix = prefix
        self.node = node
        if token is None:
            drawn = f"{node}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
            token = lambda: drawn  # noqa: E731
        self._token = token
        self.clustered = clustered
        # Set by close, after which nothing is recorded (the IMessageStore contract).
        self.closed = False
        self._disconnect = disconnect or (lambda redis: redis.disconnect())
        # Virtual groups (IGroupStore): read at restore, then every groupPollInterval seconds
        # once watched, when the count of changes moved.
        self.groupPollInterval = groupPollInterval
        self._groups: dict[str, Group] = {}
        self._groupChanges = b""
        self._groupWrites = 0
        self._watchers: list[Callable[[], None]] = []
        self._poll = LoopingCall(self._pollGroups)
        self._poll.clock = reactor
        self._create = b"0" if clustered else b"1"
        self._sync = sync
        self._flushInterval = flushInterval
        self.fenced: Callable[[list[str], list[tuple[str, str]]], None] | None = None
        self._events: list[Any] = []
        # Messages whose body the batch being recorded carries: each goes once per batch.
        self._bodies: set[str] = set()
        self._nextId = 0
        self._idBase = int.from_bytes(os.urandom(8), "big") << 40
        self._timer: IDelayedCall | None = None
        # Waiting for the batch being recorded; the batches sent and not yet answered, oldest
        # first, each with its waiters.
        self._waiters: list[Deferred[None]] = []
        self._sent: deque[_Batch] = deque()
        self._seq = 0
        # The run whose count the batches follow: a new one (a rejoined node) starts its own.
        self._counted = ""
        # After a lost connection: when the batches not answered are sent again.
        self._retry: IDelayedCall | None = None
        # Batched: a batch came due while the one before was still unanswered.
        self._behind = False

    @property
    def token(self) -> str:
        """This run's fencing token: the C{fence} of every session it owns."""
        return self._token()

    def _header(self) -> list[Any]:
        return [self._token(), self.node, self.prefix]

    # Batches

    def _record(self, *event: Any) -> None:
        self._events.extend(event)
        if self._timer is None:
            self._timer = self._reactor.callLater(
                0 if self._sync else self._flushInterval, self._send
            )

    def _send(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if not self._events:
            return
        self._behind = bool(self._sent)
        events, self._events = self._events, []
        self._bodies = set()
        waiters, self._waiters = self._waiters, []
        self._seq += 1
        token = self._token()
        starts = token != self._counted
        self._counted = token
        header = [token, self.node, self.prefix, self._create, str(self._seq), _flag(starts)]
        batch = _Batch([*header, *events], waiters)
        self._sent.append(batch)
        if self._retry is None:
            # (While a retry is due, it goes with the batches before it.)
            self._write(batch)

    def _write(self, batch: _Batch) -> None:
        _APPLY.run(self._connection(), batch.args).addBoth(self._answered, batch)

    def _answered(self, result: Any, batch: _Batch) -> None:
        if batch not in self._sent:
            return  # Answered already: this was a copy sent again.
        if isinstance(result, Failure) and _retried(result):
            # The connection was lost with the batch on it (Redis may or may not have applied
            # it), or an earlier one was: every batch not answered goes again, in order, once
            # the connection is back; the script applies each once.
            if self._retry is None:
                self._retry = self._reactor.callLater(RETRY_DELAY, self._writeAgain)
            return
        # Redis answers in order: this is the oldest batch not answered.
        self._sent.remove(batch)
        if not self._sent:
            self._behind = False
        waiters = batch.waiters
        if isinstance(result, Failure):
            self.log.failure("mqttd's Redis store could not write", result)
            # Not applied, and never sent again: the batches after it start the count anew
            # rather than wait for it.
            self._counted = ""
        else:
            fenced = [cid.decode() for cid in result[0]]
            pairs = result[1]
            strays = [(pairs[j].decode(), pairs[j + 1].decode()) for j in range(0, len(pairs), 2)]
            if fenced or strays:
                if self.fenced is not None:
                    self.fenced(fenced, strays)
                else:
                    self.log.warn(
                        "sessions owned by another broker were not written: {fenced}",
                        fenced=fenced,
                    )
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

    def _abandon(self, done: Deferred[None]) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self.log.error(
            "mqttd's Redis store stopped with {batches} batches Redis never answered",
            batches=len(self._sent),
        )
        self._sent.clear()
        done.callback(None)

    def _writeAgain(self) -> None:
        self._retry = None
        redis = self._connection()
        # (A Redis restarted meanwhile has forgotten the script.)
        _APPLY.load(redis).addErrback(lambda _: None)
        for batch in list(self._sent):
            self._write(batch)

    def _messageId(self, message: Message) -> str:
        if message.storeId is None:
            # Unique across the cluster without asking Redis: a random number for this run and
            # a counter below it.
            self._nextId += 1
            message.storeId = self._idBase + self._nextId
        mid = str(message.storeId)
        if mid not in self._bodies:
            self._bodies.add(mid)
            self._record(b"M", mid, encodeMessage(message))
        return mid

    # IMessageStore

    def _connection(self) -> Any:
        # Made at first use, which is the broker's start (restore), with the journal's script
        # loaded ahead of anything else on it.
        if self.redis is None:
            self.redis = self._connect()
            _APPLY.load(self.redis).addErrback(lambda _: None)
        return self.redis

    def restore(self) -> Deferred[StoredState]:
        # What was recorded before the start (groups of the configuration) goes first.
        self._send()
        groups = self._readGroups().addCallback(self._groupsRead, self._groupWrites)
        claimed = _CLAIM.runWhole(self._connection(), [*self._header(), b"node", self.node])
        if self.clustered:
            # The cluster restores its retained messages itself, and the last run's wills go
            # with that run's death (adopt).
            both: Deferred[list[Any]] = gatherResults([claimed, groups], consumeErrors=True)
            return both.addCallback(
                lambda replies: StoredState(sessions=claimedSessions(*replies[0][:2]))
            ).addErrback(_firstError)
        retained = self._connection().execute_command("HGETALL", self.prefix + "store:retained")
        wills = self._connection().execute_command("HGETALL", f"{self.prefix}wills:{self.node}")

        def restored(replies: list[Any]) -> StoredState:
            claim, retainedReply, willsReply, _ = replies
            return StoredState(
                retained=[
                    decodeMessage(retainedReply[j + 1]) for j in range(0, len(retainedReply), 2)
                ],
                sessions=claimedSessions(*claim[:2]),
                wills=_wills(willsReply),
            )

        d: Deferred[list[Any]] = gatherResults(
            [claimed, retained, wills, groups], consumeErrors=True
        )
        return d.addCallback(restored).addErrback(_firstError)

    def claim(self, clientIds: Iterable[str]) -> Deferred[list[SessionState]]:
        """
        Claim the sessions of C{clientIds} for this run (see L{CLAIM}), after every event
        recorded so far; fires with the persistent ones' state.
        """
        self._send()
        d = _CLAIM.runWhole(self._connection(), [*self._header(), b"client", *clientIds])
        return d.addCallback(lambda reply: claimedSessions(*reply[:2]))

    def adopt(self, node: str, run: str) -> Deferred[Adopted]:
        """
        Claim the persistent sessions the dead run C{run} of C{node} still owned, and take its
        wills, which no other caller then gets.
        """
        self._send()
        d = _CLAIM.runWhole(self._connection(), [*self._header(), b"dead", node, run])

        def adopted(reply: Sequence[Any]) -> Adopted:
            moved = reply[3]
            return Adopted(
                StoredState(sessions=claimedSessions(*reply[:2]), wills=_wills(reply[2])),
                {
                    moved[j].decode(): (int(moved[j + 1]), json.loads(moved[j + 2]))
                    for j in range(0, len(moved), 3)
                },
            )

        return d.addCallback(adopted)

    def claimClient(self, clientId: str, identity: str, refuse: bool) -> Deferred[Claimed]:
        """
        Claim C{clientId} for a client of C{identity} connecting here (L{CONNECT}), after
        every event recorded so far, unless its session belongs to another identity and
        C{refuse}.
        """
        self._send()
        d = _CONNECT.runWhole(
            self._connection(), [*self._header(), clientId, identity, _flag(refuse)]
        )

        def claimed(reply: Sequence[Any]) -> Claimed:
            if reply[0] == b"refused":
                return Claimed(refusedBy=reply[1].decode())
            _, fence, node, epoch, _, rawSessions, rawBodies = reply
            return Claimed(
                None,
                fence.decode(),
                node.decode(),
                int(epoch),
                claimedSessions(rawSessions, rawBodies),
            )

        return d.addCallback(claimed)

    def takeStrays(self, clientId: str) -> Deferred[list[tuple[Message, int, bool]]]:
        """
        Take the deliveries other runs left for C{clientId}'s session (see L{STRAYS}), now at
        the end of its queue in Redis, for the broker to add to the end of its own.
        """
        self._send()
        d = _STRAYS.runWhole(self._connection(), [*self._header(), clientId])
        return d.addCallback(lambda reply: _deliveries(reply[0], _messages(reply[1])))

    def release(self, clientId: str) -> None:
        """
        This node no longer holds C{clientId}: its claim goes, unless a persistent session
        keeps it.
        """
        self._record(b"X", clientId)

    def flush(self, exactlyOnce: bool = False) -> Deferred[None] | None:
        if self._sync or exactlyOnce:
            if self._events:
                d: Deferred[None] = Deferred()
                self._waiters.append(d)
                if not self._sync:
                    # QoS 2 waits for its step's write; it need not also wait out the interval.
                    self._send()
                return d
            if self._sent:
                d = Deferred()
                self._sent[-1].waiters.append(d)
                return d
            return None
        if self._behind and self._sent:
            # Batched, and Redis has not answered a batch within an interval: the publisher
            # waits (and is not read) until it has, so a crash loses at most that much.
            d = Deferred()
            self._sent[-1].waiters.append(d)
            return d
        return None

    def close(self) -> Deferred[None]:
        self.closed = True
        if self._poll.running:
            self._poll.stop()
        self._send()
        done: Deferred[None] = Deferred()
        if self._sent:
            self._sent[-1].waiters.append(done)
            # A Redis that does not come back must not hold the broker's stop for ever.
            late = self._reactor.callLater(CLOSE_TIMEOUT, self._abandon, done)
            done.addBoth(lambda result: late.cancel() if late.active() else None)
        else:
            done.callback(None)

        def disconnect(result: object) -> object:
            if self.redis is None:
                return result
            d: Deferred[object] = self._disconnect(self.redis)
            return d.addBoth(lambda _: result)

        return done.addBoth(disconnect)

    def sessionSaved(self, clientId: str, subscriptions: Mapping[str, int]) -> None:
        self._record(b"S", clientId, json.dumps(dict(subscriptions), separators=(",", ":")))

    def sessionDeleted(self, clientId: str) -> None:
        self._record(b"D", clientId)

    def sessionOwned(self, clientId: str, owner: str) -> None:
        self._record(b"O", clientId, owner)

    def sessionExpiry(self, clientId: str, interval: int, expiresAt: float | None) -> None:
        self._record(b"E", clientId, str(interval), "" if expiresAt is None else repr(expiresAt))

    def messageQueued(self, clientId: str, message: Message, qos: int, retain: bool) -> None:
        mid = self._messageId(message)
        self._record(b"Q", clientId, f"{qos} {int(retain)} {mid}", mid)

    def messageSent(
        self,
        clientId: str,
        packetId: int,
        message: Message,
        qos: int,
        retain: bool,
        queued: bool,
    ) -> None:
        mid = self._messageId(message)
        state = b"1" if qos == 1 else b"2"
        self._record(
            b"P", clientId, str(packetId), state, str(qos), _flag(retain), mid, _flag(queued)
        )

    def messageReleased(self, clientId: str, packetId: int) -> None:
        self._record(b"R", clientId, str(packetId))

    def messageAcknowledged(self, clientId: str, packetId: int) -> None:
        self._record(b"A", clientId, str(packetId))

    def qos2Received(self, clientId: str, packetId: int, when: float) -> None:
        self._record(b"2", clientId, str(packetId), repr(when))

    def qos2Released(self, clientId: str, packetId: int) -> None:
        self._record(b"3", clientId, str(packetId))

    def willSet(self, clientId: str, will: Will) -> None:
        self._record(b"W", clientId, encodeWill(will))

    def willCleared(self, clientId: str) -> None:
        self._record(b"w", clientId)

    # IGroupStore

    def group(self, name: str) -> Group | None:
        return self._groups.get(name)

    def groupNames(self) -> Iterable[str]:
        return self._groups.keys()

    def watch(self, changed: Callable[[], None]) -> None:
        self._watchers.append(changed)
        # Nobody needs other brokers' changes until someone watches.
        if not self._poll.running and not self.closed:
            self._poll.start(self.groupPollInterval, now=False)

    def save(self, group: Group) -> Deferred[None]:
        self._groups[group.name] = group
        return self._groupWritten(b"G", group.name, dumpGroup(group))

    def delete(self, name: str) -> Deferred[None]:
        # Written even for a group not known here: another broker may have just made it.
        self._groups.pop(name, None)
        return self._groupWritten(b"g", name)

    def _groupWritten(self, *event: Any) -> Deferred[None]:
        self._groupWrites += 1
        self._record(*event)
        for changed in self._watchers:
            changed()
        # Fires with the batch's answer: whoever changed the group is answered once Redis has
        # it (sent at the end of the turn, never before the broker's start).
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def _readGroups(self) -> Deferred[list[Any]]:
        # After what this broker recorded: the groups read are never older than its own.
        self._send()
        redis = self._connection()
        return gatherResults(
            [
                redis.execute_command("GET", self.prefix + "groups:changes"),
                redis.execute_command("HGETALL", self.prefix + "groups"),
            ],
            consumeErrors=True,
        )

    def _pollGroups(self) -> Deferred[None]:
        writes = self._groupWrites
        d = self._connection().execute_command("GET", self.prefix + "groups:changes")

        def counted(changes: bytes | None) -> Deferred[None] | None:
            if (changes or b"") == self._groupChanges:
                return None
            return self._readGroups().addCallback(self._groupsRead, writes)

        return d.addCallback(counted).addErrback(self._pollFailed)

    def _groupsRead(self, replies: list[Any], writes: int) -> None:
        changes, flat = replies
        if writes != self._groupWrites:
            # This broker changed a group while they were read: the next poll reads again.
            return
        self._groupChanges = changes or b""
        groups = {}
        for j in range(0, len(flat), 2):
            name = flat[j].decode()
            group = loadGroup(name, flat[j + 1])
            # An unchanged group keeps its object, and what the routing prepared from it.
            known = self._groups.get(name)
            groups[name] = known if known == group else group
        if groups.keys() == self._groups.keys() and all(
            groups[name] is self._groups[name] for name in groups
        ):
            return
        self._groups = groups
        for changed in self._watchers:
            changed()

    def _pollFailed(self, failure: Failure) -> None:
        # Retried at the next poll; the groups in memory keep routing meanwhile.
        self.log.failure("cannot read the virtual groups in Redis", failure)

    def retainedSet(self, message: Message) -> None:
        if not self.clustered:
            self._record(b"T", message.topic, encodeMessage(message))

    def retainedDeleted(self, topic: str) -> None:
        if not self.clustered:
            self._record(b"t", topic)


def _firstError(failure: Failure) -> Failure:
    # gatherResults wraps the failure that stopped it; the operator needs the one inside.
    error = failure.value
    if isinstance(error, FirstError):
        inner: Failure = error.subFailure
        return inner
    return failure


@implementer(IPlugin, IPluginFactory)
class RedisStoreFactory:
    """Builds L{RedisStore} from C{[plugin:redis]}."""

    name = "redis"

    def build(self, options: Mapping[str, str], context: PluginContext) -> RedisStore:
        sync, flushInterval = durabilityOptions(options, frozenset({"url", "prefix", "node"}))
        url = parseURL(options.get("url", DEFAULT_URL).strip())
        prefix = options.get("prefix", DEFAULT_PREFIX).strip()
        node = options.get("node", DEFAULT_NODE).strip()
        if not node or any(c.isspace() for c in node):
            raise PluginConfigError("node", f"expected a name without spaces, got {node!r}")
        return RedisStore(
            context.reactor,
            lambda: connect(url),
            prefix=prefix,
            node=node,
            sync=sync,
            flushInterval=flushInterval,
        )


redis = RedisStoreFactory()
