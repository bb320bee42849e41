"""The PostgreSQL broker's schema: tables and functions, as SQL text for one schema name.

Kept apart from the broker so users who migrate their databases themselves can
read (``PostgresBroker.schema_sql()``) exactly what the broker would run, and
because the SQL functions are the broker's real publish path: offsets are
assigned, history trimmed, idempotency checked and ``pg_notify`` sent inside
the publishing transaction, whoever runs it (the broker, ``publish_in`` on the
application's own transaction, or plain SQL through ``<schema>.publish``).

Every statement is idempotent (``IF NOT EXISTS``, ``CREATE OR REPLACE``), so
running the script again upgrades the functions and changes nothing else.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

__all__ = [
    "MAX_NOTIFY_SHARDS",
    "NOTIFY_LIMIT",
    "check_schema_name",
    "notify_channel",
    "schema_sql",
]

NOTIFY_LIMIT: Final = 7900
"""Largest ``pg_notify`` payload sent inline, in bytes (PostgreSQL refuses 8000 and
more); a larger publication is parked in ``<schema>.relay`` and the notification
carries its id."""

MAX_NOTIFY_SHARDS: Final = 1024
"""The most notification channels a schema's publications may be spread over."""

_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# Keywords PostgreSQL does not take as a bare schema name somewhere in the script
# (``pg_get_keywords()`` categories R, T and C of PostgreSQL 15, plus those that
# later versions added): the script splices the name unquoted, so such a name
# would fail with a syntax error at every reconnect instead of once, here.
_KEYWORDS: Final = frozenset(
    """
    all analyse analyze and any array as asc asymmetric authorization between bigint binary
    bit boolean both case cast char character check coalesce collate collation column
    concurrently constraint create cross current_catalog current_date current_role
    current_schema current_time current_timestamp current_user dec decimal default deferrable
    desc distinct do else end except exists extract false fetch float for foreign freeze from
    full grant greatest group grouping having ilike in initially inner inout int integer
    intersect interval into is isnull join lateral leading least left like limit localtime
    localtimestamp national natural nchar none normalize not notnull null nullif numeric
    offset on only or order out outer overlaps overlay placing position precision primary
    real references returning right row select session_user setof similar smallint some
    substring symmetric table tablesample then time timestamp to trailing treat trim true
    union unique user using values varchar variadic verbose when where window with
    xmlattributes xmlconcat xmlelement xmlexists xmlforest xmlnamespaces xmlparse xmlpi
    xmlroot xmlserialize xmltable
    system_user any_value json json_array json_arrayagg json_exists json_object
    json_objectagg json_query json_scalar json_serialize json_table json_value merge_action
    """.split()
)

_TEMPLATE: Final = r"""
SELECT pg_advisory_xact_lock(hashtext('hubbub schema {s}'));

CREATE SCHEMA IF NOT EXISTS {s};

-- One row per channel stream: its epoch, newest offset and how it is kept.
CREATE TABLE IF NOT EXISTS {s}.streams (
    channel    text PRIMARY KEY,
    epoch      text NOT NULL,
    top        bigint NOT NULL,
    size       integer NOT NULL,
    ttl        interval NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS streams_expires_at ON {s}.streams (expires_at);

-- The kept history: the newest `size` publications of each stream.
CREATE TABLE IF NOT EXISTS {s}.publications (
    channel         text NOT NULL,
    epoch           text NOT NULL,
    "offset"        bigint NOT NULL,
    data            bytea NOT NULL,
    codec           text NOT NULL,
    ts              bigint NOT NULL,
    sender          bytea,
    exclude         text,
    kind            text NOT NULL DEFAULT 'message',
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (channel, epoch, "offset")
);

-- Publications too large for a NOTIFY payload, fetched by id; swept after a minute.
CREATE UNLOGGED TABLE IF NOT EXISTS {s}.relay (
    id         bigserial PRIMARY KEY,
    channel    text NOT NULL,
    epoch      text,
    "offset"   bigint,
    data       bytea NOT NULL,
    codec      text NOT NULL,
    ts         bigint NOT NULL,
    sender     bytea,
    exclude    text,
    kind       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Idempotency keys within their window: the position first published under the
-- key (only what a retry is answered with), and who holds the key (the cap).
-- Schemas created by hubbub 0.1 also have data, codec, ts, sender, exclude and
-- kind columns here; they are no longer written (NULL in new rows).
CREATE TABLE IF NOT EXISTS {s}.idempotency (
    channel    text NOT NULL,
    key        text NOT NULL,
    expires_at timestamptz NOT NULL,
    epoch      text,
    "offset"   bigint,
    PRIMARY KEY (channel, key)
);
ALTER TABLE {s}.idempotency ADD COLUMN IF NOT EXISTS owner text;
CREATE INDEX IF NOT EXISTS idempotency_owner ON {s}.idempotency (channel, owner, expires_at)
    WHERE owner IS NOT NULL;

-- Presence leases.
CREATE UNLOGGED TABLE IF NOT EXISTS {s}.presence (
    channel    text NOT NULL,
    client     text NOT NULL,
    info       bytea NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (channel, client)
);

-- How many notification channels publications are spread over (one row). 1: all
-- on the channel named like the schema, as before; N > 1: on "<schema>:<k>",
-- k = the first 32 bits of md5(channel) modulo N, so a node LISTENs only to the
-- shards of the channels it serves. Nodes re-read it every health check.
CREATE TABLE IF NOT EXISTS {s}.notify_shards (
    one    boolean PRIMARY KEY DEFAULT true CHECK (one),
    shards integer NOT NULL DEFAULT 1 CHECK (shards BETWEEN 1 AND {max_shards})
);
INSERT INTO {s}.notify_shards (one) VALUES (true) ON CONFLICT DO NOTHING;

-- The notification channel of a hubbub channel, given the number of shards.
CREATE OR REPLACE FUNCTION {s}.notify_channel(p_channel text, p_shards integer) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_shards IS NULL OR p_shards <= 1 THEN '{s}'
        ELSE '{s}:' || ((('x' || substr(md5(p_channel), 1, 8))::bit(32)::bigint)
                        % p_shards)::text
    END
$$;

CREATE OR REPLACE FUNCTION {s}._new_epoch() RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT substr(replace(gen_random_uuid()::text, '-', ''), 1, 8)
$$;

-- The stream's position; a missing or expired stream comes back empty under a new epoch.
CREATE OR REPLACE FUNCTION {s}._position(p_channel text, p_empty_ttl interval)
RETURNS TABLE (o_epoch text, o_top bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
BEGIN
    RETURN QUERY SELECT st.epoch, st.top FROM {s}.streams st
        WHERE st.channel = p_channel AND st.expires_at > v_now;
    IF FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY INSERT INTO {s}.streams AS st (channel, epoch, top, size, ttl, expires_at)
        VALUES (p_channel, {s}._new_epoch(), 0, 1, p_empty_ttl, v_now + p_empty_ttl)
        ON CONFLICT (channel) DO UPDATE SET
            epoch = CASE WHEN st.expires_at <= v_now THEN EXCLUDED.epoch ELSE st.epoch END,
            top = CASE WHEN st.expires_at <= v_now THEN 0 ELSE st.top END,
            expires_at = GREATEST(st.expires_at, EXCLUDED.expires_at)
        RETURNING st.epoch, st.top;
END
$$;

-- The one publish path. The row lock on the stream's row (taken by the upsert)
-- orders publishers of a channel until their transactions end, so offsets are
-- consecutive in commit order; NOTIFY is sent at commit, never on rollback.
-- o_hit: false published; true the key was seen (the row carries the first
-- position, nothing published); NULL p_owner already holds p_cap keys in the
-- channel (nothing published). No p_owner or p_cap: no cap.
CREATE OR REPLACE FUNCTION {s}._publish(
    p_channel text, p_data bytea, p_codec text, p_ts bigint, p_sender bytea,
    p_exclude text, p_kind text, p_size integer, p_ttl interval,
    p_key text, p_window interval, p_owner text, p_cap integer
)
RETURNS TABLE (o_hit boolean, o_epoch text, o_offset bigint, o_data bytea, o_codec text,
               o_ts bigint, o_sender bytea, o_exclude text, o_kind text)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_epoch text;
    v_offset bigint;
    v_payload text;
    v_relay bigint;
BEGIN
    IF p_key IS NOT NULL THEN
        INSERT INTO {s}.idempotency AS i (channel, key, expires_at, owner)
            VALUES (p_channel, p_key, v_now + p_window, p_owner)
            ON CONFLICT (channel, key) DO UPDATE SET expires_at = EXCLUDED.expires_at,
                owner = EXCLUDED.owner, epoch = NULL, "offset" = NULL
            WHERE i.expires_at <= v_now;
        IF NOT FOUND THEN
            RETURN QUERY SELECT true, i.epoch, i."offset", p_data, p_codec, p_ts, p_sender,
                    p_exclude, p_kind
                FROM {s}.idempotency i WHERE i.channel = p_channel AND i.key = p_key;
            RETURN;
        END IF;
        IF p_owner IS NOT NULL AND p_cap IS NOT NULL AND (
            SELECT count(*) FROM (
                SELECT 1 FROM {s}.idempotency i
                    WHERE i.channel = p_channel AND i.owner = p_owner AND i.expires_at > v_now
                    LIMIT p_cap + 1) held
        ) > p_cap THEN
            DELETE FROM {s}.idempotency i WHERE i.channel = p_channel AND i.key = p_key;
            RETURN QUERY SELECT NULL::boolean, NULL::text, NULL::bigint, p_data, p_codec, p_ts,
                p_sender, p_exclude, p_kind;
            RETURN;
        END IF;
    END IF;
    IF p_size IS NOT NULL THEN
        INSERT INTO {s}.streams AS st (channel, epoch, top, size, ttl, expires_at)
            VALUES (p_channel, {s}._new_epoch(), 1, GREATEST(p_size, 1), p_ttl, v_now + p_ttl)
            ON CONFLICT (channel) DO UPDATE SET
                epoch = CASE WHEN st.expires_at <= v_now THEN EXCLUDED.epoch ELSE st.epoch END,
                top = CASE WHEN st.expires_at <= v_now THEN 1 ELSE st.top + 1 END,
                size = EXCLUDED.size, ttl = EXCLUDED.ttl, expires_at = EXCLUDED.expires_at
            RETURNING st.epoch, st.top INTO v_epoch, v_offset;
        IF v_offset = 1 THEN
            DELETE FROM {s}.publications p WHERE p.channel = p_channel AND p.epoch <> v_epoch;
        END IF;
        INSERT INTO {s}.publications
            (channel, epoch, "offset", data, codec, ts, sender, exclude, kind, idempotency_key)
            VALUES (p_channel, v_epoch, v_offset, p_data, p_codec, p_ts, p_sender, p_exclude,
                    p_kind, p_key);
        DELETE FROM {s}.publications p
            WHERE p.channel = p_channel AND p.epoch = v_epoch
              AND p."offset" <= v_offset - GREATEST(p_size, 1);
    END IF;
    IF p_key IS NOT NULL THEN
        UPDATE {s}.idempotency i SET epoch = v_epoch, "offset" = v_offset
            WHERE i.channel = p_channel AND i.key = p_key;
    END IF;
    v_payload := json_build_object(
        'c', p_channel, 'e', v_epoch, 'o', v_offset,
        'd', translate(encode(p_data, 'base64'), E'\n', ''), 'f', p_codec, 't', p_ts,
        's', translate(encode(p_sender, 'base64'), E'\n', ''), 'x', p_exclude, 'k', p_kind
    )::text;
    IF octet_length(v_payload) > {limit} THEN
        INSERT INTO {s}.relay (channel, epoch, "offset", data, codec, ts, sender, exclude, kind)
            VALUES (p_channel, v_epoch, v_offset, p_data, p_codec, p_ts, p_sender, p_exclude,
                    p_kind)
            RETURNING id INTO v_relay;
        v_payload := json_build_object('c', left(p_channel, 1000), 'r', v_relay)::text;
    END IF;
    PERFORM pg_notify(
        {s}.notify_channel(p_channel, (SELECT n.shards FROM {s}.notify_shards n)), v_payload);
    RETURN QUERY SELECT false, v_epoch, v_offset, p_data, p_codec, p_ts, p_sender, p_exclude,
        p_kind;
END
$$;

-- The publish path of hubbub 0.1 (no cap), kept for nodes not upgraded yet.
CREATE OR REPLACE FUNCTION {s}._publish(
    p_channel text, p_data bytea, p_codec text, p_ts bigint, p_sender bytea,
    p_exclude text, p_kind text, p_size integer, p_ttl interval,
    p_key text, p_window interval
)
RETURNS TABLE (o_hit boolean, o_epoch text, o_offset bigint, o_data bytea, o_codec text,
               o_ts bigint, o_sender bytea, o_exclude text, o_kind text)
LANGUAGE sql AS $$
    SELECT * FROM {s}._publish(p_channel, p_data, p_codec, p_ts, p_sender, p_exclude, p_kind,
        p_size, p_ttl, p_key, p_window, NULL::text, NULL::integer)
$$;

-- Publish from SQL, in the caller's transaction: JSON data, hubbub's wire format.
-- Pass the channel's namespace's history size and TTL (size 0: no history).
-- Returns the publication's offset (NULL without history, or the first
-- publication's offset when the idempotency key was already used).
CREATE OR REPLACE FUNCTION {s}.publish(
    channel text,
    data jsonb,
    history_size integer DEFAULT 100,
    history_ttl interval DEFAULT '24 hours',
    idempotency_key text DEFAULT NULL,
    idempotency_window interval DEFAULT '5 minutes'
) RETURNS bigint
LANGUAGE sql AS $$
    SELECT o_offset FROM {s}._publish(
        channel, convert_to(data::text, 'UTF8'), 'json',
        (extract(epoch FROM clock_timestamp()) * 1000)::bigint, NULL, NULL, 'message',
        CASE WHEN history_size > 0 THEN history_size END, history_ttl,
        idempotency_key, idempotency_window, NULL::text, NULL::integer)
$$;
"""


def check_schema_name(schema: str) -> str:
    """``schema`` if it is a plain lower-case SQL identifier PostgreSQL takes unquoted
    (it is spliced into SQL): not a keyword, not ``pg_*``.

    Raises:
        ValueError: anything else.
    """
    if not _NAME.fullmatch(schema):
        raise ValueError(
            f"schema must be a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63 "
            f"characters), not {schema!r}"
        )
    if schema in _KEYWORDS or schema.startswith("pg_"):
        raise ValueError(
            f"schema {schema!r} is reserved by PostgreSQL (an SQL keyword, or pg_*); "
            "choose another name"
        )
    return schema


def schema_sql(schema: str = "hubbub") -> str:
    """The SQL that creates (or upgrades) the broker's tables and functions in ``schema``."""
    return (
        _TEMPLATE.replace("{s}", check_schema_name(schema))
        .replace("{limit}", str(NOTIFY_LIMIT))
        .replace("{max_shards}", str(MAX_NOTIFY_SHARDS))
    )


def notify_channel(schema: str, shards: int, channel: str) -> str:
    """The notification channel ``<schema>.notify_channel(channel, shards)`` picks (the
    same hash in Python: the first 32 bits of the MD5 of the UTF-8 name, modulo shards)."""
    if shards <= 1:
        return schema
    return f"{schema}:{int(hashlib.md5(channel.encode()).hexdigest()[:8], 16) % shards}"
