"""
The C{protocol = mqtt-sn} listener's configuration: its UDP endpoint, its own keys, and the
one-line errors for keys that do not fit it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mqttd.config import ConfigError, load_config
from mqttd.sn.endpoint import UDPEndpoint, parseUDPEndpoint


def _load(tmp_path: Path, body: str) -> object:
    path = tmp_path / "mqttd.ini"
    path.write_text(body)
    return load_config(str(path))


def test_udp_endpoints() -> None:
    """udp:PORT with an optional interface, escaped colons for IPv6, as endpoint strings do."""
    assert parseUDPEndpoint("udp:1884") == UDPEndpoint(1884)
    assert parseUDPEndpoint("udp:port=1884:interface=127.0.0.1") == UDPEndpoint(1884, "127.0.0.1")
    assert parseUDPEndpoint(r"udp:0:interface=\:\:1") == UDPEndpoint(0, "::1")
    for bad in ("tcp:1884", "udp:", "udp:70000", "udp:1:2", "udp:1:backlog=5", "udp:x"):
        with pytest.raises(ValueError):
            parseUDPEndpoint(bad)


def test_sn_listener(tmp_path: Path) -> None:
    """Every MQTT-SN key is read; pre-defined topics are one 'ID = topic' a line."""
    config = _load(
        tmp_path,
        """
[listener:sn]
endpoint = udp:1884:interface=127.0.0.1
protocol = mqtt-sn
allow_anonymous = true
gateway_id = 3
predefined_topics =
    1 = sensors/temperature
    2 = sensors/humidity with spaces
retry_interval = 2.5
retry_count = 4
advertise = 255.255.255.255:1884
advertise_interval = 60
max_half_open = 10
""",
    )
    (listener,) = config.listeners  # type: ignore[attr-defined]
    assert listener.protocol == "mqtt-sn"
    assert listener.predefined_topics == (
        (1, "sensors/temperature"),
        (2, "sensors/humidity with spaces"),
    )
    assert (listener.gateway_id, listener.retry_interval, listener.retry_count) == (3, 2.5, 4)
    assert (listener.advertise, listener.advertise_interval) == ("255.255.255.255:1884", 60)
    assert listener.max_half_open == 10


@pytest.mark.parametrize(
    ("lines", "key", "why"),
    [
        ("endpoint = tcp:1884", "endpoint", "udp:PORT"),
        ("endpoint = udp:1884\npath = /mqtt", "path", "not used with protocol = mqtt-sn"),
        ("endpoint = udp:1884\ngateway_id = 256", "gateway_id", "no greater than 255"),
        ("endpoint = udp:1884\npredefined_topics = 0 = a", "predefined_topics", "ID 1 to 65534"),
        ("endpoint = udp:1884\npredefined_topics = 1 = a/+", "predefined_topics", "topic id 1"),
        (
            "endpoint = udp:1884\npredefined_topics =\n  1 = a\n  1 = b",
            "predefined_topics",
            "given twice",
        ),
        ("endpoint = udp:1884\nadvertise = nowhere", "advertise", "HOST:PORT"),
        ("endpoint = udp:1884\nretry_count = 0", "retry_count", "positive"),
    ],
)
def test_sn_listener_errors(tmp_path: Path, lines: str, key: str, why: str) -> None:
    """A bad MQTT-SN listener line stops start-up with one line naming file, section and key."""
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, f"[listener:sn]\nprotocol = mqtt-sn\n{lines}\n")
    message = str(caught.value)
    assert f"[listener:sn] {key}:" in message and why in message, message
    assert "mqttd.ini" in message


def test_sn_keys_only_on_sn_listeners(tmp_path: Path) -> None:
    """An MQTT-SN key on an MQTT listener is refused; so is a udp: endpoint there."""
    with pytest.raises(ConfigError, match=r"\[listener:l\] retry_count: only used with"):
        _load(tmp_path, "[listener:l]\nendpoint = tcp:1883\nretry_count = 3\n")
    with pytest.raises(ConfigError, match=r"\[listener:l\] endpoint:"):
        _load(tmp_path, "[listener:l]\nendpoint = udp:1884\n")
