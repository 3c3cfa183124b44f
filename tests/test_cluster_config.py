"""
The C{[cluster]} section (docs/cluster.md): what it parses to, the one line naming file,
section and key for each mistake, and that a lone broker's configuration has no cluster.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mqttd.cluster.config import RedisAddress, parseRedisURL
from mqttd.config import ConfigError, load_config
from tests.test_config import LISTENER, assertNames, write
from tests.test_footprint import LISTENER as FOOTPRINT_LISTENER
from tests.test_footprint import loaded


def test_clusterSection(tmp_path: Path) -> None:
    """Every key parses to its field; the Redis address is split into its parts."""
    path = write(
        tmp_path,
        LISTENER + "[cluster]\nredis = redis://:s%40cret@10.0.0.5:6380/2\nnode = a-1\n"
        "workers = 3\nheartbeat = 0.5\nnode_timeout = 2\nmax_pending = 50\n",
    )
    cluster = load_config(path).cluster
    assert cluster is not None
    assert cluster.redis == "redis://:s%40cret@10.0.0.5:6380/2"
    assert cluster.address == RedisAddress("10.0.0.5", 6380, 2, None, "s@cret")
    assert (cluster.node, cluster.workers, cluster.heartbeat) == ("a-1", 3, 0.5)
    assert (cluster.node_timeout, cluster.max_pending) == (2.0, 50)


def test_clusterDefaults(tmp_path: Path) -> None:
    """
    Only C{redis} is required: the node is named after the host, one worker, the default
    port and database; without the section there is no cluster at all.
    """
    assert load_config(write(tmp_path, LISTENER)).cluster is None
    cluster = load_config(write(tmp_path, LISTENER + "[cluster]\nredis = redis://r\n")).cluster
    assert cluster is not None
    assert cluster.address == RedisAddress("r")
    expected = "".join(c if c.isalnum() or c in "_.-" else "-" for c in socket.gethostname())
    assert cluster.node == expected[:64]
    assert (cluster.workers, cluster.heartbeat, cluster.node_timeout) == (1, 1.0, 5.0)


@pytest.mark.parametrize(
    "lines, key, why",
    [
        ("node = a\n", "redis", "required"),
        ("redis = http://r\n", "redis", "expected redis://"),
        ("redis = rediss://r\n", "redis", "not supported"),
        ("redis = redis://r:99999\n", "redis", "expected redis://"),
        ("redis = redis://r/x\n", "redis", "database is a number"),
        ("redis = redis://\n", "redis", "no host"),
        ("redis = redis://r\nnode = a/b\n", "node", "node name"),
        ("redis = redis://r\nworkers = 0\n", "workers", "positive integer"),
        ("redis = redis://r\nworkers = 1000\n", "workers", "1 to 256"),
        ("redis = redis://r\nheartbeat = 0\n", "heartbeat", "positive number"),
        ("redis = redis://r\nheartbeat = 2\nnode_timeout = 3\n", "node_timeout", "twice"),
        ("redis = redis://r\nmax_pending = -1\n", "max_pending", "positive integer"),
        ("redis = redis://r\nnodes = 3\n", "nodes", "unknown key"),
    ],
)
def test_badClusterValues(tmp_path: Path, lines: str, key: str, why: str) -> None:
    """Each bad value stops loading with one line naming the file, C{[cluster]} and the key."""
    path = write(tmp_path, LISTENER + "[cluster]\n" + lines)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assertNames(caught.value, path, "cluster", key)
    assert why in caught.value.why


def test_redisURL() -> None:
    """A user name and password are taken apart and unquoted; the port defaults to 6379."""
    assert parseRedisURL("redis://u:p%2Fw@h/0") == RedisAddress("h", 6379, 0, "u", "p/w")
    assert parseRedisURL("redis://[::1]:7000") == RedisAddress("::1", 7000)


def test_redisClientLoadedOnlyForACluster(tmp_path: Path) -> None:
    """
    Without a C{[cluster]} section the Redis client is never imported (the footprint test's
    probe, building the service as twistd does); with one it is.
    """
    assert "txredisapi" not in loaded(tmp_path, FOOTPRINT_LISTENER)
    cluster = FOOTPRINT_LISTENER + "[cluster]\nredis = redis://127.0.0.1:1\n"
    assert "txredisapi" in loaded(tmp_path, cluster)
