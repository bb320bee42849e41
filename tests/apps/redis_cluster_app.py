"""A hub on the Redis Cluster broker, for the cluster fault tests
(``tests/test_broker_redis_cluster.py``).

Served by ``python -m hubbub serve redis_cluster_app:app``, several processes on
one cluster. The ``redis+cluster://`` URL comes from
``HUBBUB_TEST_REDIS_CLUSTER_URL``. The hub, its namespaces and its test-only
routes are :mod:`cluster_app`'s.
"""

from __future__ import annotations

import os

from cluster_app import cluster_app

from hubbub.brokers.redis_cluster import RedisClusterBroker

broker = RedisClusterBroker.from_url(
    os.environ["HUBBUB_TEST_REDIS_CLUSTER_URL"], timeout=1.0, health_check_interval=0.5
)
hub, app = cluster_app(broker)
