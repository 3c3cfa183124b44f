"""
A C{[bridge:NAME]} section: where the other broker is, how to log in, and which topics flow
which way, in mosquitto's C{topic} syntax.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mqttd.config import ConfigError, _settable, _typedValues
from mqttd.configvalues import PARSERS, choice, parseFile
from mqttd.topics import InvalidTopic, filter_matches, validate_topic_filter
from mqttd.transports.tls import TLS_VERSIONS, TLSFileError, _certificates, _privateKey

BRIDGE_PREFIX = "bridge:"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_DIRECTIONS = ("out", "in", "both")
# The protocol keys and the CONNECT protocol level each means.
PROTOCOL_LEVELS = {"3.1": 3, "3.1.1": 4, "5.0": 5}


@dataclass(frozen=True, slots=True)
class TopicRule:
    """
    One C{topic} line: C{pattern} is the filter without the prefixes; messages on
    C{localPrefix + pattern} here are those on C{remotePrefix + pattern} there.
    """

    pattern: str
    direction: str = "out"
    qos: int = 0
    localPrefix: str = ""
    remotePrefix: str = ""

    @property
    def localFilter(self) -> str:
        return self.localPrefix + self.pattern

    @property
    def remoteFilter(self) -> str:
        return self.remotePrefix + self.pattern

    @property
    def outgoing(self) -> bool:
        return self.direction != "in"

    @property
    def incoming(self) -> bool:
        return self.direction != "out"


def remoteTopic(rules: tuple[TopicRule, ...], topic: str) -> tuple[str, TopicRule] | None:
    """
    The topic a local message goes out under, by the first outgoing rule matching it (as
    mosquitto picks), with that rule; L{None} if no rule takes it.
    """
    for rule in rules:
        if rule.outgoing and filter_matches(rule.localFilter, topic):
            return rule.remotePrefix + topic[len(rule.localPrefix) :], rule
    return None


def localTopic(rules: tuple[TopicRule, ...], topic: str) -> tuple[str, TopicRule] | None:
    """The topic a remote message is published under here; see L{remoteTopic}."""
    for rule in rules:
        if rule.incoming and filter_matches(rule.remoteFilter, topic):
            return rule.localPrefix + topic[len(rule.remotePrefix) :], rule
    return None


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """One C{[bridge:NAME]} section; see docs/bridge.md for each key."""

    name: str
    addresses: tuple[tuple[str, int], ...]
    topics: tuple[TopicRule, ...]
    round_robin: bool = False
    primary_retry_interval: float = 30.0
    protocol: str = "3.1.1"
    client_id: str = ""
    local_client_id: str = ""
    local_username: str | None = None
    username: str | None = None
    password: str | None = None
    keepalive: int = 60
    clean_start: bool = False
    session_expiry_interval: int = 0xFFFFFFFF
    try_private: bool = True
    connect_timeout: float = 10.0
    reconnect_delay_min: float = 1.0
    reconnect_delay_max: float = 60.0
    max_inflight: int = 20
    max_queued_messages: int = 10000
    max_queued_bytes: int = 16 * 1024 * 1024
    notifications: bool = True
    notifications_local_only: bool = False
    tls: bool = False
    ca_certificates: str | None = None
    certificate: str | None = None
    private_key: str | None = None
    tls_version_min: str = "1.2"
    verify_hostname: bool = True
    tls_server_name: str | None = None

    @property
    def protocolLevel(self) -> int:
        return PROTOCOL_LEVELS[self.protocol]

    @property
    def notificationTopic(self) -> str:
        return f"$SYS/broker/connection/{self.name}/state"

    @property
    def remoteNotificationTopic(self) -> str | None:
        """Where the remote broker learns the link's state, as mosquitto's bridges tell it."""
        if not self.notifications or self.notifications_local_only:
            return None
        return f"$SYS/broker/connection/{self.client_id}/state"


def _parseAddresses(key: str, text: str) -> tuple[tuple[str, int], ...]:
    addresses = []
    for item in text.replace(",", " ").split():
        host, sep, port = item.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, one or more, got {item!r}")
        addresses.append((host, int(port)))
    if not addresses:
        raise ValueError("expected host:port, one or more")
    return tuple(addresses)


def _parseTopics(key: str, text: str) -> tuple[TopicRule, ...]:
    rules = []
    for line in text.splitlines():
        if line.strip():
            rules.append(_parseTopic(line))
    if not rules:
        raise ValueError("expected one topic line or more")
    return tuple(rules)


def _parseTopic(line: str) -> TopicRule:
    # mosquitto's: topic PATTERN [[[out | in | both] QOS] LOCAL_PREFIX REMOTE_PREFIX], "" empty.
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise ValueError(f"{line.strip()!r}: {e}") from None
    if len(words) not in (1, 2, 3, 5):
        raise ValueError(
            "expected PATTERN [out|in|both [QOS [LOCAL_PREFIX REMOTE_PREFIX]]],"
            f" got {line.strip()!r}"
        )
    pattern = words[0]
    direction = words[1] if len(words) > 1 else "out"
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be out, in or both, got {direction!r}")
    qos = 0
    if len(words) > 2:
        if words[2] not in ("0", "1", "2"):
            raise ValueError(f"QoS must be 0, 1 or 2, got {words[2]!r}")
        qos = int(words[2])
    local, remote = (words[3], words[4]) if len(words) == 5 else ("", "")
    if not pattern and not (local or remote):
        raise ValueError(f"an empty pattern needs a prefix, got {line.strip()!r}")
    for prefix in (local, remote):
        if "+" in prefix or "#" in prefix:
            raise ValueError(f"a prefix cannot hold wildcards, got {prefix!r}")
    rule = TopicRule(pattern, direction, qos, local, remote)
    for topicFilter in (rule.localFilter, rule.remoteFilter):
        try:
            validate_topic_filter(topicFilter, 128)
        except InvalidTopic as e:
            raise ValueError(f"{topicFilter!r} is no topic filter: {e}") from None
    return rule


def _parseText(key: str, text: str) -> str:
    if not text:
        raise ValueError("expected a value")
    return text


def _parseClientId(key: str, text: str) -> str:
    if not text or "+" in text or "#" in text:
        raise ValueError(f"expected a client identifier, got {text!r}")
    return text


_BRIDGE_PARSERS: dict[str, Callable[[str, str], object]] = {
    "addresses": _parseAddresses,
    "topic": _parseTopics,
    "protocol": choice(*PROTOCOL_LEVELS),
    "client_id": _parseClientId,
    "local_client_id": _parseClientId,
    "local_username": _parseText,
    "username": _parseText,
    "password": _parseText,
    "ca_certificates": parseFile,
    "certificate": parseFile,
    "private_key": parseFile,
    "tls_version_min": choice(*TLS_VERSIONS),
    "tls_server_name": _parseText,
}

# Keys whose ini name differs from the field: mosquitto's own word for the topic lines.
_KEY_FIELDS = {"topic": "topics"}
# Zero means "never" here, as in mosquitto.
_ZERO_ALLOWED = frozenset({"keepalive", "session_expiry_interval", "max_queued_bytes"})


def _parseBridgeInt(key: str, text: str) -> int:
    if key in _ZERO_ALLOWED and text.strip() == "0":
        return 0
    value = PARSERS[int](key, text)
    assert isinstance(value, int)
    if key == "keepalive" and value > 65535:
        raise ValueError(f"expected at most 65535, got {text!r}")
    if key == "session_expiry_interval" and value > 0xFFFFFFFF:
        raise ValueError(f"expected at most 4294967295, got {text!r}")
    return value


def bridgeConfig(path: str, section: str, values: Mapping[str, str]) -> BridgeConfig:
    """
    Parse one C{[bridge:NAME]} section.

    @raise ConfigError: naming the key at fault.
    """
    name = section[len(BRIDGE_PREFIX) :]
    if not _NAME.fullmatch(name):
        raise ConfigError(path, section, None, "a bridge name is letters, digits, '_', '.' or '-'")
    types = {
        ("topic" if f == "topics" else f): t
        for f, t in _settable(BridgeConfig, exclude=frozenset({"name"})).items()
    }
    special = dict(_BRIDGE_PARSERS)
    for key, kind in types.items():
        if kind is int and key not in special:
            special[key] = _parseBridgeInt
    typed = _typedValues(path, section, values, types, special)
    for key in ("addresses", "topic"):
        if key not in typed:
            example = "127.0.0.1:1883" if key == "addresses" else "sensors/# out 1"
            raise ConfigError(path, section, key, f"required, e.g. {example}")
    directory = os.path.dirname(os.path.abspath(path))
    for key in ("ca_certificates", "certificate", "private_key"):
        if key in typed:
            typed[key] = os.path.join(directory, str(typed[key]))
    if "password" in typed and "username" not in typed and typed.get("protocol") != "5.0":
        raise ConfigError(path, section, "password", "needs username below protocol 5.0")
    fieldValues = {_KEY_FIELDS.get(k, k): v for k, v in typed.items()}
    hostname = socket.gethostname()
    fieldValues.setdefault("client_id", f"{hostname}.{name}")
    fieldValues.setdefault("local_client_id", f"local.{fieldValues['client_id']}")
    if any(k in typed for k in ("ca_certificates", "certificate")):
        fieldValues["tls"] = True
    config = BridgeConfig(name=name, **fieldValues)  # type: ignore[arg-type]
    _check(path, section, config, set(typed))
    return config


def _check(path: str, section: str, config: BridgeConfig, given: set[str]) -> None:
    def refuse(key: str, why: str) -> None:
        raise ConfigError(path, section, key, why)

    if config.reconnect_delay_max < config.reconnect_delay_min:
        refuse("reconnect_delay_max", "must not be below reconnect_delay_min")
    if (config.certificate is None) != (config.private_key is None):
        refuse("certificate" if config.certificate is None else "private_key", "give both")
    if not config.tls:
        for key in ("tls_version_min", "verify_hostname", "tls_server_name"):
            if key in given:
                refuse(key, "only used with TLS (tls = true, or ca_certificates)")
    try:
        if config.ca_certificates is not None:
            _certificates("ca_certificates", config.ca_certificates)
        if config.certificate is not None and config.private_key is not None:
            _certificates("certificate", config.certificate)
            _privateKey("private_key", config.private_key)
    except TLSFileError as e:
        refuse(e.key, e.why)
    if config.session_expiry_interval != 0xFFFFFFFF and config.protocol != "5.0":
        refuse("session_expiry_interval", "only used with protocol = 5.0")
