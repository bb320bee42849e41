"""What the Redis broker stores and publishes, and how it reads it back: the key
scheme, the Lua scripts, the pub/sub envelope and the stream entries (the layout is
described in :mod:`hubbub.brokers.redis`).

Nothing read from Redis is unpickled or evaluated: anything that does not parse
is dropped with a log line.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import msgspec

from ..messages import CODECS_BY_NAME, ClientInfo
from ._base import Publication

__all__ = [
    "CLIENT_INFO",
    "EMPTY_STREAM_TTL_MS",
    "ENCODER",
    "HISTORY",
    "PRESENCE_GET",
    "PRESENCE_REMOVE",
    "PRESENCE_SET",
    "PUBLISH",
    "SPUBLISH",
    "channel_of",
    "decode_entry",
    "decode_envelope",
    "key",
    "ms",
    "position_of",
    "text",
]

logger = logging.getLogger("hubbub.redis")

# A stream first created by a read (a subscribe before any publish) keeps its
# epoch this long without publications, as in the memory broker.
EMPTY_STREAM_TTL_MS: Final = 300_000
TAG: Final = b"h1"

ENCODER: Final = msgspec.msgpack.Encoder()
PUBLICATION: Final = msgspec.msgpack.Decoder(Publication)
CLIENT_INFO: Final = msgspec.msgpack.Decoder(ClientInfo)


def key(prefix: str, channel: str, kind: str) -> str:
    """``<prefix>{<n>:<channel>}:<kind>``: see :mod:`hubbub.brokers.redis`."""
    return f"{prefix}{{{len(channel.encode())}:{channel}}}:{kind}"


def channel_of(prefix: bytes, name: bytes) -> str | None:
    """The channel of a pub/sub channel name ``<prefix>{<n>:<channel>}:pub``, or None."""
    start = len(prefix)
    if not name.startswith(prefix) or name[start : start + 1] != b"{":
        return None
    length, colon, rest = name[start + 1 :].partition(b":")
    if not colon or not length.isdigit() or rest[int(length) :] != b"}:pub":
        return None
    return rest[: int(length)].decode(errors="replace")


# The stream's *lineage*, checked by the publish and history scripts. Redis
# replicates asynchronously: a primary may acknowledge (and publish) writes its
# replica never got; once the replica is promoted it would hand their offsets to
# other publications under the same epoch, and a subscriber that had received a
# lost one would silently hold a different publication than the stream. Every
# write records its server's replication id (``master_replid``: it changes when a
# replica is promoted and when a primary restarts) in the meta hash as ``rid``; a
# script that finds another ``rid`` there than its server's starts a new epoch,
# keeping the history and the offsets, so no position of the old epoch can ever
# name another publication. A meta hash without ``rid`` (an older hubbub wrote it)
# adopts the server's. Sets ``epoch``, ``offset``, ``rid``; ``fresh`` is the epoch
# to start, KEYS[1] the meta hash, KEYS[2] the stream.
_LINEAGE: Final = """
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset', 'rid')
local rid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or '-'
local epoch = meta[1]
local offset = tonumber(meta[2])
local created = false
if not epoch or not offset then
  epoch = fresh
  offset = 0
  created = true
  redis.call('DEL', KEYS[2])
elseif meta[3] and meta[3] ~= rid then
  epoch = fresh
end
"""

# KEYS: meta, stream, idem, idem-by.  ARGV: pub/sub channel, body, history (0/1),
# size, ttl ms, new epoch, idempotency window ms (0: none), idempotency key, cap.
# Returns {status, position}: status 0 published, 1 the key was seen (nothing
# published), 2 the publisher holds ``cap`` keys in the channel (nothing
# published); position "<offset> <epoch>" ("- -" without history).
_PUBLISH: Final = (
    """
local window = tonumber(ARGV[7])
local now
if window > 0 then
  local seen = redis.call('GET', KEYS[3])
  if seen then return {1, seen} end
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[9]) then return {2, ''} end
end
local position
if ARGV[3] == '1' then
local fresh = ARGV[6]
"""
    + _LINEAGE
    + """
  offset = offset + 1
  local id = string.format('%d-0', offset)
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', offset, 'rid', rid)
  local ok = redis.pcall('XADD', KEYS[2], 'MAXLEN', ARGV[4], id, 'd', ARGV[2])
  if type(ok) == 'table' and ok.err then
    redis.call('DEL', KEYS[2])
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], id, 'd', ARGV[2])
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  position = string.format('%d', offset) .. ' ' .. epoch
else
  position = '- -'
end
if window > 0 then
  redis.call('SET', KEYS[3], position, 'PX', window)
  redis.call('ZADD', KEYS[4], now + window, ARGV[8])
  local last = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[4], last[2])
end
redis.call('PUBLISH', ARGV[1], 'h1 ' .. position .. ' ' .. ARGV[2])
return {0, position}
"""
)

PUBLISH: Final = _PUBLISH
"""The publish script of one Redis: classic pub/sub."""

SPUBLISH: Final = _PUBLISH.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'")
"""The publish script of a Redis Cluster: sharded pub/sub (Redis >= 7), from the
script itself, so pub/sub order is stream order on the channel's shard too."""

# KEYS: meta, stream.  ARGV: new epoch, empty-stream ttl ms, since epoch ("" for
# none), range command (XRANGE, XREVRANGE or "" for none), start, end, count
# ("" for all).  Returns {epoch, offset, entries}. A stream that does not exist is
# created empty (its epoch is then kept EMPTY_STREAM_TTL_MS without publications).
HISTORY: Final = (
    """
local fresh = ARGV[1]
"""
    + _LINEAGE
    + """
if created then
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0, 'rid', rid)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif epoch ~= meta[1] or not meta[3] then
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'rid', rid)
end
local top = string.format('%d', offset)
if ARGV[3] ~= '' and ARGV[3] ~= epoch then return {epoch, top, false} end
if ARGV[4] == '' then return {epoch, top, {}} end
local entries
if ARGV[7] == '' then
  entries = redis.call(ARGV[4], KEYS[2], ARGV[5], ARGV[6])
else
  entries = redis.call(ARGV[4], KEYS[2], ARGV[5], ARGV[6], 'COUNT', ARGV[7])
end
return {epoch, top, entries}
"""
)

_TIME: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Lua's unpack() fails above ~8,000 values ("too many results to unpack"): lists
# of clients go to variadic commands in chunks.
_CHUNK: Final = 1000

_SWEEP: Final = f"""
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  for i = 1, #expired, {_CHUNK} do
    redis.call('HDEL', KEYS[2], unpack(expired, i, math.min(i + {_CHUNK - 1}, #expired)))
  end
end
"""

# KEYS: zset, hash.  ARGV: client, info, ttl ms.
PRESENCE_SET: Final = (
    _TIME
    + _SWEEP
    + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
redis.call('PEXPIREAT', KEYS[2], last[2])
return 1
"""
)

# KEYS: zset, hash.  ARGV: client.
PRESENCE_REMOVE: Final = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[1], KEYS[2]) end
return 1
"""

# KEYS: zset, hash.  Returns {client, info, client, info, ...}.
PRESENCE_GET: Final = (
    _TIME
    + _SWEEP
    + f"""
local clients = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {{}}
for i = 1, #clients, {_CHUNK} do
  local last = math.min(i + {_CHUNK - 1}, #clients)
  local infos = redis.call('HMGET', KEYS[2], unpack(clients, i, last))
  for j = 1, last - i + 1 do
    if infos[j] then
      out[#out + 1] = clients[i + j - 1]
      out[#out + 1] = infos[j]
    end
  end
end
return out
"""
)


def ms(seconds: float) -> int:
    return int(seconds * 1000)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def position_of(position: Any) -> tuple[int | None, str | None]:
    """``(offset, epoch)`` from ``b"<offset> <epoch>"`` (``b"- -"``: none)."""
    raw = position.encode() if isinstance(position, str) else bytes(position)
    offset, epoch = raw.split(b" ")
    if offset == b"-":
        return None, None
    return int(offset), epoch.decode()


def decode_envelope(envelope: Any, channel: str) -> Publication | None:
    """A publication from hubbub's pub/sub format, or None (logged) for anything else."""
    try:
        tag, offset, epoch, body = envelope.split(b" ", 3)
        if tag != TAG:
            raise ValueError("not a hubbub envelope")
        publication = PUBLICATION.decode(body)
        if publication.channel != channel or publication.codec not in CODECS_BY_NAME:
            raise ValueError("channel or codec does not match")
        if offset != b"-":
            publication = msgspec.structs.replace(
                publication, offset=int(offset), epoch=epoch.decode()
            )
    except (AttributeError, ValueError, TypeError, RecursionError, msgspec.DecodeError) as exc:
        logger.warning("dropped an unreadable publication on %r: %s", channel, exc)
        return None
    return publication


def decode_entry(entry: Any, channel: str, epoch: str) -> Publication | None:
    """A publication from one stream entry ``[b"<offset>-0", [b"d", body]]``, or None."""
    try:
        entry_id, fields = entry
        offset, _, seq = entry_id.partition(b"-")
        if seq != b"0" or len(fields) != 2 or fields[0] != b"d":
            raise ValueError("not a hubbub stream entry")
        publication = PUBLICATION.decode(fields[1])
        if publication.channel != channel or publication.codec not in CODECS_BY_NAME:
            raise ValueError("channel or codec does not match")
        return msgspec.structs.replace(publication, offset=int(offset), epoch=epoch)
    except (AttributeError, ValueError, TypeError, RecursionError, msgspec.DecodeError) as exc:
        logger.warning("dropped an unreadable history entry in %r: %s", channel, exc)
        return None
