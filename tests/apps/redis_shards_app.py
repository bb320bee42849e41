"""A hub on the sharded Redis broker, for the sharded multi-node tests
(``tests/test_broker_redis_shards.py``).

Served by ``python -m hubbub serve redis_shards_app:app``, several processes on
the same shards. The ``redis+shards://`` URL comes from
``HUBBUB_TEST_REDIS_SHARDS_URL``. The hub, its namespaces and its test-only
routes are :mod:`cluster_app`'s.
"""

from __future__ import annotations

import os

from cluster_app import cluster_app

from hubbub.brokers.redis_shards import ShardedRedisBroker

broker = ShardedRedisBroker.from_url(
    os.environ["HUBBUB_TEST_REDIS_SHARDS_URL"], timeout=1.0, health_check_interval=0.5
)
hub, app = cluster_app(broker)
