"""
The broker's configuration: ini text in, frozen values out.

Every mistake in the file is reported as one L{ConfigError} naming the file, the section and the
key, so that C{twistd mqttd --config ...} fails at start-up with a line an operator can act on
instead of a broker that runs with a setting it silently ignored.

This module holds the frozen values (L{BrokerConfig}, L{ListenerConfig}, L{LogConfig},
L{Config}), L{ConfigError} and reading the file section by section; each kind of value is
parsed by L{mqttd.configvalues}, a C{[listener:NAME]} section by L{mqttd.listenerconfig}.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, get_type_hints

from mqttd.configvalues import (
    PARSERS,
    PLUGIN_NAME,
    choice,
    parseName,
    parseNames,
    parsePaths,
    parseResponseInformation,
)

if TYPE_CHECKING:
    from mqttd.bridge.config import BridgeConfig
    from mqttd.cluster.config import ClusterConfig
    from mqttd.transports.tls import TLSSettings

# The names of mqttd.transports.tls.TLS_VERSIONS, which is imported only for listeners using TLS.
TLS_VERSIONS = ("1.2", "1.3")


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Limits and policies of the broker core; the C{[broker]} section."""

    max_packet_size: int = 1024 * 1024
    max_connect_size: int = 64 * 1024
    max_inflight: int = 20
    max_queued_messages: int = 1000
    max_queued_bytes: int = 10 * 1024 * 1024
    max_awaiting_rel: int = 100
    await_rel_timeout: float = 300.0
    max_topic_levels: int = 128
    max_keepalive: int = 65535
    connect_timeout: float = 10.0
    message_size_limit: int = 0
    retain_available: bool = True
    allow_zero_length_clientid: bool = True
    # MQTT 5 Topic Alias Maximum advertised in CONNACK: aliases one client may define.
    topic_alias_maximum: int = 10
    # Shared subscriptions ($share/{group}/{filter}), for 3.1.1 and 5.0 clients alike.
    shared_subscriptions: bool = True
    # MQTT 5 Response Information for a client that asks for it: a topic prefix for its
    # responses, {clientid} standing for its client identifier; empty = never sent.
    response_information: str = "reply/{clientid}/"
    # What a CONNECT gets whose client id has a session belonging to another identity:
    # "refuse" (CONNACK 5 / 0x87, logged) or "discard" (the old session is ended and the
    # newcomer starts afresh, as if the client id had been free).
    session_owner_conflict: str = "refuse"
    # Seconds between updates of the $SYS tree; 0 = no $SYS tree (mosquitto's sys_interval).
    sys_interval: float = 10.0
    # Whether $SYS/broker/clients/{clientid}/connected and /disconnected events are published.
    presence_events: bool = False
    # Connections open at once over all MQTT listeners; 0 = no limit (mosquitto's is per
    # listener, which [listener:NAME] max_connections is too).
    max_connections: int = 0
    # Whether a 3.x client asking for keepalive 0 (none) is accepted when max_keepalive is set;
    # mosquitto 2.0 accepts it.  A 5.0 client is told max_keepalive as its Server Keep Alive.
    allow_zero_keepalive: bool = True


DEFAULT_BACKLOG = 1024
_BACKLOG_ENDPOINTS = ("tcp", "tcp6", "ssl", "unix")
# A backlog= option in an endpoint string (its options are separated by unescaped colons).
_BACKLOG_GIVEN = re.compile(r"(?<!\\):backlog=")


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One C{[listener:NAME]} section."""

    name: str
    endpoint: str
    allow_anonymous: bool = False
    connect_rate_per_address: float = 0.0
    connect_burst_per_address: int = 0
    protocol: str = "mqtt"
    path: str = "/mqtt"
    # TLS managed by mqttd (mqttd.transports.tls), around whatever socket the endpoint gives.
    certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    require_certificate: bool = False
    identity: str = "none"
    tls_version_min: str = "1.2"
    crl_file: str | None = None
    # The listener's own authenticator chain; None means [auth] chain.
    auth: tuple[str, ...] | None = None
    # protocol = http: the file of API keys (mqttd apikey), and the users of the listener's
    # authenticators who may log in to the dashboard.
    api_keys: str | None = None
    admins: tuple[str, ...] = ()
    # mosquitto's: the client id is the authenticated user name, or the verified certificate's
    # identity (identity = cn | san), whatever the CONNECT says, so one user is one session.
    use_username_as_clientid: bool = False
    use_identity_as_clientid: bool = False
    # MQTT-SN (protocol = mqtt-sn) only; see docs/mqtt-sn.md.  The GwId of ADVERTISE and GWINFO.
    gateway_id: int = 1
    # Topic ids clients may use without registering them: (id, topic name) pairs.
    predefined_topics: tuple[tuple[int, str], ...] = ()
    # Tretry and Nretry (section 6.13): a message the client must answer is sent again after
    # retry_interval seconds, at most retry_count times; then the client is taken as lost.
    retry_interval: float = 10.0
    retry_count: int = 5
    # Where ADVERTISE is sent (a broadcast or multicast HOST:PORT), every advertise_interval s.
    advertise: str | None = None
    advertise_interval: int = 900
    # Clients between CONNECT and CONNACK (will exchange, authentication) at once.
    max_half_open: int = 100
    # Connections open at once on this listener; 0 = no limit.
    max_connections: int = 0
    # The kernel's queue of connections not yet accepted (listen(2)), for tcp:, tcp6:, ssl:
    # and unix: endpoints: Twisted's default of 50 overflows in a reconnection storm.
    backlog: int = DEFAULT_BACKLOG
    # TCP_NODELAY on each connection's socket: small packets go out at once instead of waiting
    # (Nagle) for the peer to acknowledge the last; a latency-sensitive broker wants it.
    tcp_nodelay: bool = True

    def listenEndpoint(self) -> str:
        """The endpoint string to listen with: C{endpoint}, with C{backlog} where it applies."""
        kind = self.endpoint.split(":", 1)[0]
        if kind not in _BACKLOG_ENDPOINTS or _BACKLOG_GIVEN.search(self.endpoint):
            return self.endpoint
        return f"{self.endpoint}:backlog={self.backlog}"

    def tlsSettings(self) -> TLSSettings | None:
        """The listener's mqttd-managed TLS, or L{None} for plain and C{ssl:} endpoints."""
        if self.certificate is None or self.private_key is None:
            return None
        from mqttd.transports.tls import TLSSettings

        return TLSSettings(
            certificate=self.certificate,
            private_key=self.private_key,
            ca_certificates=self.ca_certificates,
            require_certificate=self.require_certificate,
            crl_file=self.crl_file,
            tls_version_min=self.tls_version_min,
        )


@dataclass(frozen=True, slots=True)
class LogConfig:
    """
    The C{[log]} section: what C{twistd mqttd} writes to its log file (or standard output).

    @ivar level: the least severe events written: C{debug}, C{info}, C{warn}, C{error} or
        C{critical}.
    @ivar format: C{text} (twistd's lines) or C{json} (one JSON object a line).
    """

    level: str = "info"
    format: str = "text"


@dataclass(frozen=True, slots=True)
class Config:
    """
    The whole file.

    @ivar pluginPaths: C{[plugins] paths}, absolute, searched after the shipped plugins.
    @ivar pluginSections: each C{[plugin:NAME]} section's keys, by NAME, unparsed: a plugin
        checks its own options when built.
    @ivar authChain: C{[auth] chain}, for listeners without their own C{auth}.
    @ivar aclChain: C{[acl] chain}.
    @ivar storePlugin: C{[store] plugin}, the L{IMessageStore} plugin; L{None} for the memory
        store.
    @ivar selectorChain: C{[selectors] chain}, the L{ISubscriberSelector} plugins.
    @ivar observerChain: C{[observers] chain}, the L{IBrokerObserver} plugins.
    @ivar bridges: the C{[bridge:NAME]} sections, connections to other brokers.
    @ivar cluster: the C{[cluster]} section (docs/cluster.md); L{None} for a lone broker.
    """

    broker: BrokerConfig = field(default_factory=BrokerConfig)
    listeners: tuple[ListenerConfig, ...] = ()
    source: str | None = None
    pluginPaths: tuple[str, ...] = ()
    pluginSections: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    authChain: tuple[str, ...] = ()
    aclChain: tuple[str, ...] = ()
    storePlugin: str | None = None
    selectorChain: tuple[str, ...] = ()
    observerChain: tuple[str, ...] = ()
    bridges: tuple[BridgeConfig, ...] = ()
    log: LogConfig = field(default_factory=LogConfig)
    cluster: ClusterConfig | None = None

    def pluginKind(self, name: str) -> str:
        """
        The plugin that C{name} is an instance of: its C{[plugin:NAME]} section's C{plugin}
        key, else C{name} itself.
        """
        return self.pluginSections.get(name, {}).get("plugin", name)

    @property
    def configDirectory(self) -> str:
        """Where relative paths in the file are relative to: the file's directory."""
        return os.path.dirname(os.path.abspath(self.source)) if self.source else os.getcwd()


class ConfigError(Exception):
    """
    The configuration cannot be used.

    @ivar file: the path of the configuration file, as given.
    @ivar section: the offending section's name, or L{None} when the whole file is at fault.
    @ivar key: the offending key, or L{None} when the whole section is at fault.
    @ivar why: what is wrong, for a human.
    """

    def __init__(self, file: str, section: str | None, key: str | None, why: str) -> None:
        super().__init__(file, section, key, why)
        self.file = file
        self.section = section
        self.key = key
        self.why = why

    def __str__(self) -> str:
        where = self.file
        if self.section is not None:
            where += f": [{self.section}]"
        if self.key is not None:
            where += f" {self.key}"
        # Configparser messages span lines; the operator gets one line, whatever the cause.
        why = " ".join(self.why.split())
        return f"{where}: {why}"


_LISTENER_PREFIX = "listener:"
_PLUGIN_PREFIX = "plugin:"

_LOG_PARSERS: dict[str, Callable[[str, str], object]] = {
    "level": choice("debug", "info", "warn", "error", "critical"),
    "format": choice("text", "json"),
}


def _typedValues(
    path: str,
    section: str,
    values: Mapping[str, str],
    types: Mapping[str, type],
    special: Mapping[str, Callable[[str, str], object]],
) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, text in values.items():
        if key not in types:
            known = ", ".join(sorted(types))
            raise ConfigError(path, section, key, f"unknown key; expected one of {known}")
        parse = special.get(key) or PARSERS[types[key]]
        try:
            result[key] = parse(key, text.strip())
        except ValueError as e:
            raise ConfigError(path, section, key, str(e)) from None
    return result


def _settable(cls: type, exclude: frozenset[str] = frozenset()) -> dict[str, type]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if f.name not in exclude}


_BROKER_PARSERS: dict[str, Callable[[str, str], object]] = {
    "response_information": parseResponseInformation,
    "session_owner_conflict": choice("refuse", "discard"),
}


def _brokerConfig(path: str, values: Mapping[str, str]) -> BrokerConfig:
    typed = _typedValues(path, "broker", values, _settable(BrokerConfig), _BROKER_PARSERS)
    return BrokerConfig(**typed)  # type: ignore[arg-type]


def load_config(path: str) -> Config:
    """
    Read the ini file at C{path}.

    @raise ConfigError: if the file cannot be read or holds anything but a valid C{[broker]}
        section and at least one valid C{[listener:NAME]} section.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(path, None, None, f"cannot read the file: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, None, f"not UTF-8 text: {e}") from None

    # Interpolation off: a "%" in a password or a path is just a character.
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=path)
    except configparser.DuplicateOptionError as e:
        raise ConfigError(path, e.section, e.option, f"given twice (line {e.lineno})") from None
    except configparser.DuplicateSectionError as e:
        raise ConfigError(path, e.section, None, f"given twice (line {e.lineno})") from None
    except configparser.Error as e:
        raise ConfigError(path, None, None, e.message) from None

    unknownSection = (
        "unknown section; expected [broker], [listener:NAME], [plugins], [auth], [acl], [store],"
        " [selectors], [observers], [log], [cluster], [plugin:NAME] or [bridge:NAME]"
    )
    if parser.defaults():
        # configparser would copy these keys into every section, hiding where a value came from.
        raise ConfigError(path, parser.default_section, None, unknownSection)

    broker = BrokerConfig()
    log = LogConfig()
    listeners = []
    chains: dict[str, object] = {}
    pluginSections: dict[str, Mapping[str, str]] = {}
    bridges = []
    cluster = None
    for section in parser.sections():
        values = dict(parser.items(section))
        if section == "broker":
            broker = _brokerConfig(path, values)
        elif section == "log":
            typed = _typedValues(path, section, values, _settable(LogConfig), _LOG_PARSERS)
            log = LogConfig(**typed)  # type: ignore[arg-type]
        elif section.startswith(_LISTENER_PREFIX):
            # Imported here: it builds on this module.
            from mqttd.listenerconfig import listenerConfig

            listeners.append(listenerConfig(path, section, values))
        elif section in _CHAIN_SECTIONS:
            key, parse = _CHAIN_SECTIONS[section]
            typed = _typedValues(path, section, values, {key: tuple}, {key: parse})
            chains[section] = typed.get(key, ())
        elif section.startswith(_PLUGIN_PREFIX):
            name = section[len(_PLUGIN_PREFIX) :]
            if not PLUGIN_NAME.fullmatch(name):
                raise ConfigError(path, section, None, "not a plugin name")
            options = {k: v.strip() for k, v in values.items()}
            if "plugin" in options and not PLUGIN_NAME.fullmatch(options["plugin"]):
                raise ConfigError(
                    path, section, "plugin", f"expected one plugin name, got {options['plugin']!r}"
                )
            pluginSections[name] = options
        elif section.startswith("bridge:"):
            # Imported here: the bridge package builds on this module.
            from mqttd.bridge.config import bridgeConfig

            bridges.append(bridgeConfig(path, section, values))
        elif section == "cluster":
            # Imported here: the cluster package builds on this module.
            from mqttd.cluster.config import clusterConfig

            cluster = clusterConfig(path, values)
        else:
            raise ConfigError(path, section, None, unknownSection)
    if not listeners:
        raise ConfigError(
            path, None, None, "no [listener:NAME] section; at least one listener is required"
        )
    configDirectory = os.path.dirname(os.path.abspath(path))
    paths = chains.get("plugins", ())
    assert isinstance(paths, tuple)
    for directory in paths:
        # A misspelt directory would otherwise only show as its plugins being "unknown".
        if not os.path.isdir(os.path.join(configDirectory, os.path.expanduser(directory))):
            raise ConfigError(path, "plugins", "paths", f"no such directory: {directory!r}")
    return Config(
        broker=broker,
        listeners=tuple(listeners),
        source=path,
        pluginPaths=tuple(os.path.join(configDirectory, os.path.expanduser(p)) for p in paths),
        pluginSections=pluginSections,
        authChain=chains.get("auth", ()),  # type: ignore[arg-type]
        aclChain=chains.get("acl", ()),  # type: ignore[arg-type]
        storePlugin=chains.get("store"),  # type: ignore[arg-type]
        selectorChain=chains.get("selectors", ()),  # type: ignore[arg-type]
        observerChain=chains.get("observers", ()),  # type: ignore[arg-type]
        bridges=tuple(bridges),
        log=log,
        cluster=cluster,
    )


# Sections holding one list: the section, its only key and how that key is parsed.
_CHAIN_SECTIONS: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "plugins": ("paths", parsePaths),
    "auth": ("chain", parseNames),
    "acl": ("chain", parseNames),
    "store": ("plugin", parseName),
    "selectors": ("chain", parseNames),
    "observers": ("chain", parseNames),
}


def default_config() -> Config:
    """
    The configuration used without C{--config}: like mosquitto 2.0, reachable only from this
    machine, so allowing anonymous clients exposes nothing to the network.
    """
    local = ListenerConfig(
        name="local", endpoint="tcp:1883:interface=127.0.0.1", allow_anonymous=True
    )
    return Config(listeners=(local,))
