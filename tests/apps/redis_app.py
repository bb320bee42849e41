"""A hub on the Redis broker, for the multi-node and fault tests (``tests/test_e2e_brokers.py``,
``tests/test_e2e_redis.py``).

Served by ``python -m hubbub serve redis_app:app``, several processes on one
Redis. The Redis URL comes from ``HUBBUB_TEST_REDIS_URL``. The hub, its
namespaces and its test-only routes are :mod:`cluster_app`'s.
"""

from __future__ import annotations

import os

from cluster_app import cluster_app

from hubbub.brokers.redis import RedisBroker

broker = RedisBroker.from_url(
    os.environ["HUBBUB_TEST_REDIS_URL"], timeout=1.0, health_check_interval=0.5
)
hub, app = cluster_app(broker)
