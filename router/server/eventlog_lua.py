"""The shared event log's entry format and its Lua scripts (each one atomic step in Redis).

An entry of a Redis Stream holds a batch of log entries: `f` = the number of the first,
`d` = the entries packed as `type SP json LF`; its ID `0-<end>` is the number after the last.

Writes are idempotent: a stream's meta keeps `w`, the number of its entries written, and a
write skips what is already there. So a write that timed out but was executed (a paused
Redis runs what it had received when it resumes) can be sent again, whole or with more
entries after it, and nothing is written twice. A run written from an instance's own log
keeps one such count per writer (`w:<writer>`); an agent's POST is not retried.
"""

from __future__ import annotations

from collections.abc import Sequence

Entry = tuple[str, bytes]


def packed_lines(entries: Sequence[Entry]) -> list[bytes]:
    return [etype.encode() + b" " + data + b"\n" for etype, data in entries]


def pack(entries: Sequence[Entry]) -> bytes:
    return b"".join(packed_lines(entries))


def unpack(packed: bytes) -> list[Entry]:
    out: list[Entry] = []
    for line in packed.split(b"\n"):
        if line:
            etype, _, data = line.partition(b" ")
            out.append((etype.decode(), data))
    return out


# Appends `k` packed entries to a run (KEYS counter, stream, meta); -1 when it has ended.
_RUN_FN = """
local function add_run(counter, stream, meta, k, packed, maxlen, ttl, closes)
  if redis.call('HGET', meta, 'state') == 'closed' then return -1 end
  local last = redis.call('INCRBY', counter, k)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '0-' .. last, 'f', last - k, 'd', packed)
  redis.call('HSETNX', meta, 'state', 'open')
  if closes == '1' then redis.call('HSET', meta, 'state', 'closed') end
  redis.call('EXPIRE', counter, ttl)
  redis.call('EXPIRE', stream, ttl)
  redis.call('EXPIRE', meta, ttl)
  return last
end
"""

# KEYS: counter, stream, meta. ARGV: n, packed, maxlen, ttl_s, closes (0/1).
# Returns the run's count after the append, or -1 when the run has ended.
APPEND_RUN = _RUN_FN + """
return add_run(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4],
               ARGV[5])
"""

# A run's entries from one writer's own log. KEYS: counter, stream, meta. ARGV: writer,
# first (the writer's number of the first entry), maxlen, ttl_s, closes, entries...
# Returns the writer's count written, or -1 when the run has ended.
WRITE_RUN = _RUN_FN + """
local field = 'w:' .. ARGV[1]
local w = tonumber(redis.call('HGET', KEYS[3], field) or '0')
local first, n = tonumber(ARGV[2]), #ARGV - 5
local skip = math.max(0, w - first)
if skip >= n then return w end
local packed = table.concat(ARGV, '', 6 + skip, #ARGV)
if add_run(KEYS[1], KEYS[2], KEYS[3], n - skip, packed, ARGV[3], ARGV[4], ARGV[5]) < 0 then
  return -1
end
redis.call('HSET', KEYS[3], field, first + n)
return first + n
"""

# A stream's entries, and their copy into its run when it has one; `closes` marks it ended
# (kept `end_ttl_s` more). KEYS: stream, meta, [run counter, run stream, run meta]. ARGV:
# instance, first, maxlen, run ttl_s, closes (0/1), end_ttl_s, entries...
# Returns the stream's count written; -2 when another instance has taken the stream over
# (this one was cut off from Redis longer than its lease): its entries are no longer ours.
WRITE_STREAM = _RUN_FN + """
local held = redis.call('HMGET', KEYS[2], 'inst', 'w')
if held[1] and held[1] ~= ARGV[1] then return -2 end
local w = tonumber(held[2] or '0')
local first, n = tonumber(ARGV[2]), #ARGV - 6
local skip = math.max(0, w - first)
if skip < n then
  local packed = table.concat(ARGV, '', 7 + skip, #ARGV)
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '0-' .. (first + n), 'f', first + skip,
             'd', packed)
  redis.call('HSET', KEYS[2], 'w', first + n)
  if #KEYS == 5 then
    add_run(KEYS[3], KEYS[4], KEYS[5], n - skip, packed, ARGV[3], ARGV[4], '0')
  end
  w = first + n
end
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[2], 'state', 'closed')
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
return w
"""

# KEYS: meta, the heartbeat key of the instance named in it. ARGV: that instance, me.
CLAIM = """
if redis.call('HGET', KEYS[1], 'inst') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'inst', ARGV[2])
return 1
"""

# KEYS: per instance, its heartbeat key then its suspect key. ARGV: the lease in ms.
# Per instance, 1 when it is dead: its heartbeat has been missing for a whole lease by
# Redis's own clock, from the first time a reader found it missing. A heartbeat's expiry
# alone is not enough: a Redis that was paused expires every heartbeat at once, and a live
# instance refreshes its own (and clears the suspicion) within a third of a lease of Redis
# answering again.
DEAD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS, 2 do
  local dead = 0
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local since = tonumber(redis.call('GET', KEYS[i + 1]) or '')
    if since == nil then
      redis.call('SET', KEYS[i + 1], now, 'PX', lease * 3)
    elseif now - since >= lease then
      dead = 1
    end
  end
  out[#out + 1] = dead
end
return out
"""
