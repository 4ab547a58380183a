"""A namespace's keys in Redis, and the Lua scripts that change several of them at once.

Every key of a namespace carries the hash tag ``{ns}``, so all of them live in one slot and the
scripts run on Redis Cluster too. The keys (``{ns}`` stands for the tagged namespace):

- ``{ns}:ids``: a hash, task ID to its watch settings (JSON), for each task not ended yet.
- ``{ns}:queue``: a stream with one entry per task to watch, ``id=<task ID>``, read by the
  consumer group `GROUP`. A worker owns the tasks whose entries are pending under its name:
  ownership is the consumer group's, and its lease is the entry's idle time (renewed by
  claiming the entry again; a worker that stops renewing loses it to ``XAUTOCLAIM``).
- ``{ns}:state``: a hash, task ID to its last transition (``"<n> <JSON>"``, the ``n``-th of
  the task's), ended tasks included until
  ``{ns}:ended`` trims them: the first sighting of a follower that comes late.
- ``{ns}:ended``: a sorted set, task ID by the time it ended (ms), for that trimming.
- ``{ns}:events``: a stream of every transition, ``id=<task ID> data=<JSON> seq=<n>``, capped
  near a length (``MAXLEN ~``): what followers read, from where they left off. ``seq`` counts
  the namespace's transitions (``{ns}:published``): a reader that finds one missing between
  two it read knows that the cap trimmed events unread (or that Redis lost its data, when
  the count goes back).
- ``{ns}:published``: how many transitions the namespace has published.
- ``{ns}:workers``: a hash, worker name to its last heartbeat (JSON).
- ``{ns}:key``: the fingerprint of the API key the namespace's workers use (never the key).
- ``{ns}:rate``: the namespace's rate budget: the rate allowed now (AIMD), when it was last
  cut and last updated; ``{ns}:demand``: each worker's demand (polls/s it wants) and when it
  said so.
"""

from __future__ import annotations

import attrs

#: The consumer group of a namespace's workers.
GROUP = "workers"


@attrs.frozen
class Keys:
    """The names of one namespace's keys."""

    namespace: str

    def _key(self, name: str) -> str:
        return f"{{{self.namespace}}}:{name}"

    @property
    def ids(self) -> str:
        return self._key("ids")

    @property
    def queue(self) -> str:
        return self._key("queue")

    @property
    def state(self) -> str:
        return self._key("state")

    @property
    def ended(self) -> str:
        return self._key("ended")

    @property
    def events(self) -> str:
        return self._key("events")

    @property
    def published(self) -> str:
        return self._key("published")

    @property
    def workers(self) -> str:
        return self._key("workers")

    @property
    def fingerprint(self) -> str:
        return self._key("key")

    @property
    def rate(self) -> str:
        return self._key("rate")

    @property
    def demand(self) -> str:
        return self._key("demand")


#: KEYS: ids, queue, state, key. ARGV: fingerprint (or ""), settings JSON, task IDs...
#: Adds each ID neither watched nor ended (and still remembered) to the queue; returns how
#: many it added. Refuses a namespace whose workers serve another API key.
SUBMIT = """
if ARGV[1] ~= '' then
  local known = redis.call('GET', KEYS[4])
  if known and known ~= ARGV[1] then
    return redis.error_reply('WRONGKEY the workers of this namespace serve another API key')
  end
end
local added = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local ended = redis.call('HEXISTS', KEYS[3], id) == 1 and redis.call('HEXISTS', KEYS[1], id) == 0
  if not ended and redis.call('HSETNX', KEYS[1], id, ARGV[2]) == 1 then
    redis.call('XADD', KEYS[2], '*', 'id', id)
    added = added + 1
  end
end
return added
"""

#: The part of each worker script that says whether ``entry`` is pending under ``me``.
_OWNS = """
local function owns(queue, entry, me)
  local pending = redis.call('XPENDING', queue, 'workers', entry, entry, 1)
  return #pending == 1 and pending[1][2] == me
end
"""

#: KEYS: queue, ids, state, ended, events, published. ARGV: worker, events cap, seconds an
#: ended task's state is kept, then (task ID, queue entry, "1" if final, transition JSON) for each.
#: Publishes each transition of a task the worker still owns (fenced: one that lost its lease
#: publishes nothing); a final one also ends the task's ownership. Returns the IDs not owned.
#: Each is stored as ``"<n> <JSON>"``, ``n`` counting the task's transitions: a follower that
#: read a task's state drops the events it has seen there already, whatever order they come in.
PUBLISH = (
    _OWNS
    + """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local lost = {}
for i = 4, #ARGV, 4 do
  local id, entry, final, data = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if not owns(KEYS[1], entry, ARGV[1]) then
    lost[#lost + 1] = id
  else
    local current = redis.call('HGET', KEYS[3], id)
    local n = (current and tonumber(string.match(current, '^(%d+) ')) or 0) + 1
    data = n .. ' ' .. data
    redis.call('HSET', KEYS[3], id, data)
    local seq = redis.call('INCR', KEYS[6])
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[2], '*', 'id', id, 'data', data, 'seq', seq)
    if final == '1' then
      redis.call('HDEL', KEYS[2], id)
      redis.call('ZADD', KEYS[4], ms, id)
      redis.call('XACK', KEYS[1], 'workers', entry)
      redis.call('XDEL', KEYS[1], entry)
    end
  end
end
local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ms - ARGV[3] * 1000, 'LIMIT', 0, 100)
if #old > 0 then
  redis.call('HDEL', KEYS[3], unpack(old))
  redis.call('ZREM', KEYS[4], unpack(old))
end
return lost
"""
)

#: KEYS: queue, workers. ARGV: worker, heartbeat JSON, then (task ID, queue entry) for each.
#: Renews the lease of each entry still the worker's; returns the IDs it no longer owns.
RENEW = (
    _OWNS
    + """
local lost = {}
for i = 3, #ARGV, 2 do
  if owns(KEYS[1], ARGV[i + 1], ARGV[1]) then
    redis.call('XCLAIM', KEYS[1], 'workers', ARGV[1], 0, ARGV[i + 1], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return lost
"""
)

#: KEYS: queue, ids, workers. ARGV: worker, how many at most. Hands up to that many of the
#: worker's tasks back to the queue (as new entries, for any worker to take at once); returns
#: how many. Once none is left, the worker leaves the group.
HAND_BACK = """
local pending = redis.call('XPENDING', KEYS[1], 'workers', '-', '+', ARGV[2], ARGV[1])
for _, item in ipairs(pending) do
  local entry = item[1]
  local found = redis.call('XRANGE', KEYS[1], entry, entry)
  redis.call('XACK', KEYS[1], 'workers', entry)
  redis.call('XDEL', KEYS[1], entry)
  if #found == 1 then
    local id = found[1][2][2]
    if redis.call('HEXISTS', KEYS[2], id) == 1 then
      redis.call('XADD', KEYS[1], '*', 'id', id)
    end
  end
end
if #pending == 0 then
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], 'workers', ARGV[1])
end
return #pending
"""

#: KEYS: rate, demand. ARGV: worker, limit, its demand (requests/s), its 429s since it last
#: asked, decrease, floor, recovery (the client's AIMD constants), seconds a grant lasts.
#: The namespace's AIMD rate (a 429 anywhere cuts it, once a second at most; it climbs back by
#: ``recovery * limit`` a second), shared by demand: a worker's share is its part of the rate,
#: but never more than what the others' grants leave (they hold theirs until they ask again),
#: so the grants never add up to more than the rate. Returns the share, and the rate.
RATE = """
local t = redis.call('TIME')
local now = t[1] + t[2] / 1000000
local limit = tonumber(ARGV[2])
local demand = math.max(tonumber(ARGV[3]), 0.001)
local state = redis.call('HMGET', KEYS[1], 'rate', 'cut_at', 'updated')
local rate = math.min(tonumber(state[1]) or limit, limit)
local cut_at = tonumber(state[2]) or 0
local updated = tonumber(state[3]) or now
if tonumber(ARGV[4]) > 0 and now - cut_at >= 1 then
  rate = math.max(rate * tonumber(ARGV[5]), limit * tonumber(ARGV[6]))
  cut_at = now
else
  rate = math.min(limit, rate + tonumber(ARGV[7]) * limit * math.max(now - updated, 0))
end
redis.call('HSET', KEYS[1], 'rate', rate, 'cut_at', cut_at, 'updated', now, 'limit', limit)
local total, others = demand, 0
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local wanted, granted, at = string.match(all[i + 1], '(%S+) (%S+) (%S+)')
  if now - tonumber(at) > tonumber(ARGV[8]) then
    redis.call('HDEL', KEYS[2], all[i])
  elseif all[i] ~= ARGV[1] then
    total = total + tonumber(wanted)
    others = others + tonumber(granted)
  end
end
local share = math.min(rate * demand / total, math.max(rate - others, 0))
redis.call('HSET', KEYS[2], ARGV[1], demand .. ' ' .. share .. ' ' .. now)
return {tostring(share), tostring(rate)}
"""

#: KEYS: state, ids. ARGV: task IDs. Each task's last transition; "" for one watched and not
#: seen yet; nil for one not in the fleet. (One read of both: a task's first sighting can be
#: its end, which a worker publishes at once, between two separate reads.)
STATES = """
local out = {}
for i, id in ipairs(ARGV) do
  local data = redis.call('HGET', KEYS[1], id)
  if data then
    out[i] = data
  elseif redis.call('HEXISTS', KEYS[2], id) == 1 then
    out[i] = ''
  else
    out[i] = false
  end
end
return out
"""
