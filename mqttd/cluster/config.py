"""
The C{[cluster]} section: which Redis the nodes share, this node's name, and how many local
worker processes serve its listeners.  Reading it imports nothing of Redis.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from mqttd.config import ConfigError, _settable, _typedValues

SECTION = "cluster"
NODE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# More worker processes than this on one machine is a typo, not a deployment.
MAX_WORKERS = 256


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where the cluster's Redis is, parsed from C{redis://[[user]:password@]host[:port][/db]}."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """
    @ivar redis: the C{redis} key, as written (for logs) ...
    @ivar address: ... and parsed.
    @ivar node: this node's name, unique in the cluster; with C{workers} above one, the prefix
        of the workers' names C{NODE-1} ... C{NODE-N}.
    @ivar workers: local processes sharing the listeners with C{SO_REUSEPORT}.
    @ivar heartbeat: seconds between a node's heartbeats (and its checks of the others').
    @ivar node_timeout: seconds without a heartbeat after which a node counts as dead.
    @ivar max_pending: QoS 1/2 messages for other nodes held in memory while Redis is
        unreachable, after which publishers needing them are refused.

    Numbers are positive: the C{[broker]} parsers check that.
    """

    redis: str
    address: RedisAddress
    node: str
    workers: int = 1
    heartbeat: float = 1.0
    node_timeout: float = 5.0
    max_pending: int = 10000


def parseRedisURL(text: str) -> RedisAddress:
    """
    Parse C{redis://[[user]:password@]host[:port][/db]}.

    @raise ValueError: saying what is wrong with C{text}.
    """
    example = "expected redis://HOST[:PORT][/DB], e.g. redis://127.0.0.1:6379/0"
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError:
        raise ValueError(f"{example}; got {text!r}") from None
    if url.scheme != "redis":
        why = "TLS to Redis (rediss://) is not supported" if url.scheme == "rediss" else example
        raise ValueError(f"{why}; got {text!r}")
    if not url.hostname:
        raise ValueError(f"no host: {example}; got {text!r}")
    if url.query or url.fragment:
        raise ValueError(f"{example}; got {text!r}")
    db = url.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"the database is a number; got {db!r}")
    return RedisAddress(
        host=url.hostname,
        port=6379 if port is None else port,
        db=int(db or 0),
        username=unquote(url.username) if url.username else None,
        password=unquote(url.password) if url.password is not None else None,
    )


def _parseNode(key: str, text: str) -> str:
    if not NODE_NAME.fullmatch(text):
        raise ValueError(f"a node name is 1 to 64 letters, digits, '_', '.' or '-'; got {text!r}")
    return text


def _parseRedis(key: str, text: str) -> str:
    parseRedisURL(text)
    return text


def defaultNodeName() -> str:
    """The host's name, made a valid node name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64] or "mqttd"


def clusterConfig(path: str, values: Mapping[str, str]) -> ClusterConfig:
    """
    Parse the C{[cluster]} section.

    @raise ConfigError: naming the key at fault.
    """
    types = _settable(ClusterConfig, exclude=frozenset({"address"}))
    typed = _typedValues(path, SECTION, values, types, {"redis": _parseRedis, "node": _parseNode})
    if "redis" not in typed:
        raise ConfigError(path, SECTION, "redis", "required, e.g. redis://127.0.0.1:6379/0")
    workers = typed.get("workers", 1)
    assert isinstance(workers, int)
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(path, SECTION, "workers", f"expected 1 to {MAX_WORKERS}, got {workers}")
    config = ClusterConfig(
        address=parseRedisURL(str(typed["redis"])),
        node=str(typed.get("node") or defaultNodeName()),
        **{k: v for k, v in typed.items() if k != "node"},  # type: ignore[arg-type]
    )
    if config.node_timeout < 2 * config.heartbeat:
        raise ConfigError(
            path,
            SECTION,
            "node_timeout",
            f"expected at least twice heartbeat ({2 * config.heartbeat}),"
            f" got {config.node_timeout}",
        )
    return config
