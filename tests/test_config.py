"""
Tests for L{mqttd.config}: ini files in, frozen configuration out, and one clear line for every
mistake.
"""

from __future__ import annotations

import configparser
from dataclasses import fields
from pathlib import Path

import pytest

from mqttd.config import (
    BrokerConfig,
    Config,
    ConfigError,
    ListenerConfig,
    default_config,
    load_config,
)

SHIPPED = Path(__file__).parent.parent / "etc" / "mqttd.ini"

LISTENER = "[listener:main]\nendpoint = tcp:1883:interface=127.0.0.1\n"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mqttd.ini"
    path.write_text(text, encoding="utf-8")
    return str(path)


def assertNames(err: ConfigError, path: str, section: str | None, key: str | None) -> None:
    """
    C{err}'s attributes and its single line of text both name where the mistake is.
    """
    line = str(err)
    assert "\n" not in line
    assert (err.file, err.section, err.key) == (path, section, key)
    assert line.startswith(f"{path}: ")
    if section is not None:
        assert f"[{section}]" in line
    if key is not None:
        assert f"[{section}] {key}: " in line


def test_goodFile(tmp_path: Path) -> None:
    """
    Every kind of value parses to its field's type, unset fields keep their defaults, and each
    C{[listener:NAME]} becomes a L{ListenerConfig} named NAME, in file order.
    """
    path = write(
        tmp_path,
        "[broker]\n"
        "max_inflight = 5\n"
        "await_rel_timeout = 2.5\n"
        "message_size_limit = 0\n"
        "retain_available = false\n"
        "response_information = responses/{clientid}\n"
        "[listener:public]\n"
        "endpoint = tcp:1883\n"
        "connect_rate_per_address = 0.5\n"
        "connect_burst_per_address = 3\n"
        "[listener:local]\n"
        "endpoint = tcp:1884:interface=127.0.0.1\n"
        "allow_anonymous = TRUE\n",
    )
    assert load_config(path) == Config(
        broker=BrokerConfig(
            max_inflight=5,
            await_rel_timeout=2.5,
            message_size_limit=0,
            retain_available=False,
            response_information="responses/{clientid}",
        ),
        listeners=(
            ListenerConfig(
                name="public",
                endpoint="tcp:1883",
                connect_rate_per_address=0.5,
                connect_burst_per_address=3,
            ),
            ListenerConfig(
                name="local", endpoint="tcp:1884:interface=127.0.0.1", allow_anonymous=True
            ),
        ),
        source=path,
    )


def test_percentIsLiteral(tmp_path: Path) -> None:
    """
    Interpolation is off: a C{%} in a value (here a Unix socket path) is kept as written.
    """
    path = write(tmp_path, "[listener:sock]\nendpoint = unix:/tmp/mqttd%%(x)s.sock\n")
    assert load_config(path).listeners[0].endpoint == "unix:/tmp/mqttd%%(x)s.sock"


def test_brokerSectionOptional(tmp_path: Path) -> None:
    """
    Without C{[broker]} every limit has its default.
    """
    assert load_config(write(tmp_path, LISTENER)).broker == BrokerConfig()


def test_missingFile(tmp_path: Path) -> None:
    """
    A file that does not exist is reported by name.
    """
    path = str(tmp_path / "absent.ini")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assertNames(caught.value, path, None, None)
    assert "No such file" in str(caught.value)


def test_notIni(tmp_path: Path) -> None:
    """
    Text that is not ini at all is reported on one line, even though configparser's own message
    spans several.
    """
    path = write(tmp_path, "endpoint = tcp:1883\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assertNames(caught.value, path, None, None)


@pytest.mark.parametrize(
    "section", ["store-x", "authentication", "plugin", "plugin:", "Broker", "listener"]
)
def test_unknownSection(tmp_path: Path, section: str) -> None:
    """
    A section other than the known ones is an error naming it, including near-misses of the
    real ones and a plugin section without a plugin name.
    """
    path = write(tmp_path, f"{LISTENER}[{section}]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assertNames(caught.value, path, section, None)


def test_defaultSectionRefused(tmp_path: Path) -> None:
    """
    C{[DEFAULT]}, whose keys configparser would copy into every section, is an unknown section.
    """
    path = write(tmp_path, f"[DEFAULT]\nmax_inflight = 5\n{LISTENER}")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assertNames(caught.value, path, "DEFAULT", None)


def withValue(section: str, key: str, value: str) -> str:
    """
    A valid file but for C{key = value} in C{section} (C{broker} or C{listener:main}).
    """
    if section == "broker":
        return f"{LISTENER}[broker]\n{key} = {value}\n"
    return f"{LISTENER}{key} = {value}\n"


@pytest.mark.parametrize(
    ("section", "key"),
    [("broker", "max_inflights"), ("listener:main", "name"), ("listener:main", "bind")],
)
def test_unknownKey(tmp_path: Path, section: str, key: str) -> None:
    """
    A key the section does not have (a typo, or a field that is not configurable) is an error
    naming file, section and key, rather than being ignored.
    """
    path = write(tmp_path, withValue(section, key, "5"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assertNames(caught.value, path, section, key)
    assert "unknown key" in str(caught.value)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("broker", "max_inflight", "abc"),
        ("broker", "max_inflight", "2.5"),
        ("broker", "max_inflight", "-1"),
        ("broker", "max_inflight", "0"),
        ("broker", "max_inflight", ""),
        ("broker", "max_queued_messages", "1_000"),
        ("broker", "max_keepalive", "65536"),
        ("broker", "message_size_limit", "-1"),
        ("broker", "connect_timeout", "0"),
        ("broker", "connect_timeout", "-2.5"),
        ("broker", "await_rel_timeout", "inf"),
        ("broker", "connect_timeout", "nan"),
        ("broker", "retain_available", "maybe"),
        ("broker", "retain_available", "1"),
        ("broker", "response_information", "reply/+/{clientid}"),
        ("broker", "response_information", "reply/{client}/"),
        ("listener:main", "allow_anonymous", "yes"),
        ("listener:main", "connect_rate_per_address", "-1"),
        ("listener:main", "connect_burst_per_address", "1.5"),
    ],
)
def test_badValue(tmp_path: Path, section: str, key: str, value: str) -> None:
    """
    A value of the wrong type, a non-positive limit (zero only where it means "off") or a
    keep-alive beyond MQTT's two bytes is an error naming file, section, key and the value.
    """
    path = write(tmp_path, withValue(section, key, value))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assertNames(caught.value, path, section, key)
    assert str(caught.value).endswith(f"got {value!r}")


def test_repeatedKey(tmp_path: Path) -> None:
    """
    A key given twice in one section is an error rather than last-one-wins.
    """
    path = write(tmp_path, f"{LISTENER}[broker]\nmax_inflight = 5\nmax_inflight = 6\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assertNames(caught.value, path, "broker", "max_inflight")


@pytest.mark.parametrize(
    "endpoint",
    [
        "tpc:1883",
        "tcp:port",
        "tcp:1883:interfce=127.0.0.1",
        "ssl:8883:privateKey=/nonexistent/mqttd.key",
        "",
    ],
)
def test_badEndpoint(tmp_path: Path, endpoint: str) -> None:
    """
    An endpoint string Twisted cannot parse (unknown type, bad port, misspelt option, missing TLS
    key file) fails at load time, naming the listener and the C{endpoint} key.
    """
    path = write(tmp_path, f"[listener:main]\nendpoint = {endpoint}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assertNames(caught.value, path, "listener:main", "endpoint")


def test_missingEndpoint(tmp_path: Path) -> None:
    """
    A listener without an endpoint is an error naming the C{endpoint} key.
    """
    path = write(tmp_path, "[listener:main]\nallow_anonymous = true\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assertNames(caught.value, path, "listener:main", "endpoint")


@pytest.mark.parametrize("name", ["", "my listener", "a/b"])
def test_badListenerName(tmp_path: Path, name: str) -> None:
    """
    A listener's name, which appears in logs, must be a plain word.
    """
    path = write(tmp_path, f"[listener:{name}]\nendpoint = tcp:1883\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assertNames(caught.value, path, f"listener:{name}", None)


def test_repeatedListener(tmp_path: Path) -> None:
    """
    Two listeners with the same name are an error, not a silent merge.
    """
    path = write(tmp_path, LISTENER + LISTENER)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assertNames(caught.value, path, "listener:main", None)


def test_noListener(tmp_path: Path) -> None:
    """
    A file without any listener is an error: a broker nobody can reach is never intended.
    """
    path = write(tmp_path, "[broker]\nmax_inflight = 5\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assertNames(caught.value, path, None, None)
    assert "[listener:NAME]" in str(caught.value)


def test_errorFormat() -> None:
    """
    The message reads C{file: [section] key: why}, dropping what is not known, and stays on one
    line even when the reason has several.
    """
    assert str(ConfigError("etc/mqttd.ini", "broker", "max_inflight", "bad\nvalue")) == (
        "etc/mqttd.ini: [broker] max_inflight: bad value"
    )
    assert str(ConfigError("a.ini", "auth", None, "unknown")) == "a.ini: [auth]: unknown"
    assert str(ConfigError("a.ini", None, None, "unreadable")) == "a.ini: unreadable"


def test_defaultConfig() -> None:
    """
    Without a file, mqttd listens on loopback only, and there allows anonymous clients, as
    mosquitto 2.0 does.
    """
    config = default_config()
    assert config.broker == BrokerConfig()
    assert config.listeners == (
        ListenerConfig(name="local", endpoint="tcp:1883:interface=127.0.0.1", allow_anonymous=True),
    )


def test_shippedConfig() -> None:
    """
    The shipped C{etc/mqttd.ini} loads, writes out every broker limit with its built-in default,
    and listens anonymously on loopback only, for MQTT and for MQTT over WebSocket.
    """
    config = load_config(str(SHIPPED))
    assert config.broker == BrokerConfig()
    shipped = configparser.ConfigParser(interpolation=None)
    shipped.read(SHIPPED, encoding="utf-8")
    assert set(shipped["broker"]) == {each.name for each in fields(BrokerConfig)}
    assert [
        (each.name, each.endpoint, each.allow_anonymous, each.protocol) for each in config.listeners
    ] == [
        ("default", "tcp:1883:interface=127.0.0.1", True, "mqtt"),
        ("web", "tcp:8080:interface=127.0.0.1", True, "websocket"),
    ]
