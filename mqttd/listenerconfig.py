"""
C{[listener:NAME]} sections: their typed values, the keys each protocol takes (MQTT-SN's own,
WebSocket's path, the HTTP API's keys, the backlog of stream endpoints), and TLS keys checked
together with the files they name, so that a listener that could not serve stops the start-up.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import NoReturn

from mqttd.config import (
    _BACKLOG_ENDPOINTS,
    _BACKLOG_GIVEN,
    _LISTENER_PREFIX,
    TLS_VERSIONS,
    ConfigError,
    ListenerConfig,
    _settable,
    _typedValues,
)
from mqttd.configvalues import (
    LISTENER_NAME,
    choice,
    parseEndpoint,
    parseFile,
    parseHostPort,
    parseNames,
    parsePath,
    parsePredefinedTopics,
    parseUDP,
    parseUsers,
)
from mqttd.transports import TLSFileError

# Keys of an MQTT-SN listener only, and keys it cannot use (MQTT-SN over DTLS is not offered).
_SN_KEYS = frozenset(
    {
        "gateway_id",
        "predefined_topics",
        "retry_interval",
        "retry_count",
        "advertise",
        "advertise_interval",
        "max_half_open",
    }
)
_NOT_SN_KEYS = (
    "path",
    "certificate",
    "private_key",
    "ca_certificates",
    "require_certificate",
    "backlog",
    "tcp_nodelay",
)

_LISTENER_PARSERS: dict[str, Callable[[str, str], object]] = {
    "admins": parseUsers,
    "api_keys": parseFile,
    "auth": parseNames,
    "endpoint": parseEndpoint,
    "protocol": choice("mqtt", "websocket", "http", "mqtt-sn"),
    "predefined_topics": parsePredefinedTopics,
    "advertise": parseHostPort,
    "path": parsePath,
    "certificate": parseFile,
    "private_key": parseFile,
    "ca_certificates": parseFile,
    "crl_file": parseFile,
    "identity": choice("none", "cn", "san"),
    "tls_version_min": choice(*TLS_VERSIONS),
}


# An MQTT-SN listener's endpoint is a UDP port, which Twisted's endpoint strings do not describe.
_SN_LISTENER_PARSERS = {**_LISTENER_PARSERS, "endpoint": parseUDP}


def listenerConfig(path: str, section: str, values: Mapping[str, str]) -> ListenerConfig:
    name = section[len(_LISTENER_PREFIX) :]
    if not LISTENER_NAME.fullmatch(name):
        raise ConfigError(
            path, section, None, "a listener name is letters, digits, '_', '.' or '-'"
        )
    types = _settable(ListenerConfig, exclude=frozenset({"name"}))
    sn = values.get("protocol", "").strip() == "mqtt-sn"
    typed = _typedValues(
        path, section, values, types, _SN_LISTENER_PARSERS if sn else _LISTENER_PARSERS
    )
    if "endpoint" not in typed:
        raise ConfigError(path, section, "endpoint", "required, e.g. tcp:1883:interface=127.0.0.1")
    for key in _NOT_SN_KEYS if sn else _SN_KEYS:
        if key in typed:
            raise ConfigError(
                path, section, key, ("not" if sn else "only") + " used with protocol = mqtt-sn"
            )
    if "path" in typed and typed.get("protocol") != "websocket":
        raise ConfigError(path, section, "path", "only used with protocol = websocket")
    if "max_connections" in typed and typed.get("protocol") == "http":
        raise ConfigError(path, section, "max_connections", "only used with MQTT listeners")
    if "backlog" in typed:
        endpoint = str(typed["endpoint"])
        if endpoint.split(":", 1)[0] not in _BACKLOG_ENDPOINTS:
            raise ConfigError(
                path, section, "backlog", "only used with tcp:, tcp6:, ssl: and unix: endpoints"
            )
        if _BACKLOG_GIVEN.search(endpoint):
            raise ConfigError(path, section, "backlog", "the endpoint already sets backlog=")
    for key in ("api_keys", "admins"):
        if key in typed and typed.get("protocol") != "http":
            raise ConfigError(path, section, key, "only used with protocol = http")
    for key in (*_TLS_FILES, "api_keys"):
        if key in typed:
            # Relative to the configuration file, so the file works from any directory.
            typed[key] = os.path.join(os.path.dirname(os.path.abspath(path)), str(typed[key]))
    listener = ListenerConfig(name=name, **typed)  # type: ignore[arg-type]
    if listener.use_identity_as_clientid and listener.tlsSettings() is None:
        raise ConfigError(
            path, section, "use_identity_as_clientid", "needs identity = cn or san (TLS)"
        )
    _checkTLS(path, section, listener, set(typed))
    return listener


_TLS_FILES = ("certificate", "private_key", "ca_certificates", "crl_file")
_TLS_KEYS = ("ca_certificates", "require_certificate", "identity", "tls_version_min", "crl_file")


def _checkTLS(path: str, section: str, listener: ListenerConfig, given: set[str]) -> None:
    """
    Check that the TLS keys make sense together and that every file they name can be used, so
    that a wrong path or a key that does not fit its certificate stops the start-up.
    """

    def refuse(key: str, why: str) -> NoReturn:
        raise ConfigError(path, section, key, why)

    if listener.certificate is None or listener.private_key is None:
        for key in ("certificate", "private_key", *_TLS_KEYS):
            if key in given:
                refuse(key, "TLS needs both certificate and private_key")
        return
    if listener.endpoint.split(":", 1)[0] == "ssl":
        # Two TLS layers would be stacked; the ssl: endpoint's own options are the other way.
        refuse("certificate", "the endpoint is already ssl:; use a tcp: endpoint with these keys")
    if listener.ca_certificates is None:
        for key in ("require_certificate", "crl_file"):
            if key in given:
                refuse(key, "client certificates need ca_certificates to verify them")
    if listener.identity != "none" and not listener.require_certificate:
        refuse("identity", "needs require_certificate = true")
    if listener.use_identity_as_clientid and listener.identity == "none":
        refuse("use_identity_as_clientid", "needs identity = cn or san")
    from mqttd.transports.tls import load

    settings = listener.tlsSettings()
    assert settings is not None
    try:
        load(settings)
    except TLSFileError as e:
        refuse(e.key, e.why)
