"""
The values of the ini file: one parser per kind of value, each given the key and its text and
returning the typed value, or raising C{ValueError} saying what was expected (the caller makes it
a L{mqttd.config.ConfigError} naming the file, section and key).  Numbers are checked against
the bounds the broker needs: zero only where it documents "no limit", nothing above what the
wire can carry.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from twisted.internet.endpoints import _parseServer

from mqttd.sn.endpoint import parseUDPEndpoint
from mqttd.topics import InvalidTopic, validate_topic_name

PLUGIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
LISTENER_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")

# Zero is the documented "no limit" for these; every other number must be positive, because a zero
# window, queue or timeout would make the broker refuse all traffic rather than mean "unlimited".
_ZERO_ALLOWED = frozenset(
    {
        "message_size_limit",
        "max_queued_bytes",
        "connect_rate_per_address",
        "connect_burst_per_address",
        "topic_alias_maximum",
        "sys_interval",
        "max_connections",
    }
)
# The keep-alive travels in a two-byte field, so a larger limit could never be reached.
_MAXIMUM = {
    "max_keepalive": 65535,
    "topic_alias_maximum": 65535,
    # MQTT-SN's GwId is one octet and ADVERTISE's Duration two.
    "gateway_id": 255,
    "advertise_interval": 65535,
}


def parseInt(key: str, text: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"expected {_integerKind(key)}, got {text!r}")
    value = int(text)
    minimum = 0 if key in _ZERO_ALLOWED else 1
    maximum = _MAXIMUM.get(key)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f" no greater than {maximum}" if maximum is not None else ""
        raise ValueError(f"expected {_integerKind(key)}{bound}, got {text!r}")
    return value


def _integerKind(key: str) -> str:
    return "a non-negative integer" if key in _ZERO_ALLOWED else "a positive integer"


def parseFloat(key: str, text: str) -> float:
    kind = "a non-negative number" if key in _ZERO_ALLOWED else "a positive number"
    if not _DECIMAL.fullmatch(text):
        raise ValueError(f"expected {kind}, got {text!r}")
    value = float(text)
    if not math.isfinite(value) or value < 0 or (value == 0 and key not in _ZERO_ALLOWED):
        raise ValueError(f"expected {kind}, got {text!r}")
    return value


def parseBool(key: str, text: str) -> bool:
    # Only mosquitto's spelling, so a setting copied between the two brokers means the same.
    lowered = text.lower()
    if lowered not in ("true", "false"):
        raise ValueError(f"expected true or false, got {text!r}")
    return lowered == "true"


def parseEndpoint(key: str, text: str) -> str:
    try:
        # Parsing without a reactor catches unknown types, bad ports, misspelt options and, for
        # ssl:, unreadable key and certificate files, at load time rather than at listen time.
        _parseServer(text, None)
    except Exception as e:
        raise ValueError(f"not a Twisted server endpoint string ({e}), got {text!r}") from e
    return text


def choice(*allowed: str) -> Callable[[str, str], str]:
    def parse(key: str, text: str) -> str:
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return text

    return parse


def parsePath(key: str, text: str) -> str:
    if not text.startswith("/") or any(c.isspace() or c in "?#" for c in text):
        raise ValueError(f"expected an absolute URL path such as /mqtt, got {text!r}")
    return text


def parseFile(key: str, text: str) -> str:
    # Read (and so checked) with the rest of the TLS settings in _checkTLS.
    if not text:
        raise ValueError("expected a file path")
    return text


def parseNames(key: str, text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    if names == ("",):
        return ()
    for name in names:
        if not PLUGIN_NAME.fullmatch(name):
            raise ValueError(f"expected comma-separated plugin names, got {text!r}")
    return names


def parseName(key: str, text: str) -> str:
    if not PLUGIN_NAME.fullmatch(text):
        raise ValueError(f"expected one plugin name, got {text!r}")
    return text


def parseUsers(key: str, text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    if not all(names) or any(":" in n for n in names):
        raise ValueError(f"expected comma-separated user names, got {text!r}")
    return names


def parsePredefinedTopics(key: str, text: str) -> tuple[tuple[int, str], ...]:
    # One "ID = topic name" a line, so topic names may hold any character but a line break.
    topics: dict[int, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        number, equals, topic = (part.strip() for part in line.partition("="))
        if not equals or not _INTEGER.fullmatch(number) or not 1 <= int(number) <= 0xFFFE:
            raise ValueError(f"expected lines of 'ID = topic' with ID 1 to 65534, got {line!r}")
        try:
            validate_topic_name(topic)
        except InvalidTopic as e:
            raise ValueError(f"topic id {number}: {e}") from None
        if int(number) in topics:
            raise ValueError(f"topic id {number} given twice")
        topics[int(number)] = topic
    return tuple(topics.items())


def parseHostPort(key: str, text: str) -> str:
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return text


def parseUDP(key: str, text: str) -> str:
    # An MQTT-SN listener's endpoint is a UDP port, which Twisted's endpoint strings do not
    # describe.
    parseUDPEndpoint(text)
    return text


def parseResponseInformation(key: str, text: str) -> str:
    # What remains once the placeholder is gone is sent as is, so it must be topic text.
    rest = text.replace("{clientid}", "")
    if any(c in rest for c in "+#{}\0"):
        raise ValueError(
            f"expected a topic prefix without wildcards, {{clientid}} its only placeholder,"
            f" got {text!r}"
        )
    return text


def parsePaths(key: str, text: str) -> tuple[str, ...]:
    paths = tuple(p.strip() for p in text.split(","))
    if any(not p for p in paths):
        raise ValueError(f"expected comma-separated directories, got {text!r}")
    return paths


PARSERS: dict[type, Callable[[str, str], object]] = {
    int: parseInt,
    float: parseFloat,
    bool: parseBool,
}
