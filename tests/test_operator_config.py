"""
Configuration an operator writes for plugins: named instances (one plugin loaded twice),
C{[observers] chain}, and the mistakes that must stop start-up instead of being ignored: a
C{[plugin:NAME]} section nothing uses, a C{plugin} key naming no plugin, a C{[plugins] paths}
directory that does not exist.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from mqttd.cli import main as cli
from mqttd.config import ConfigError, load_config
from mqttd.interfaces import Allow, Credentials
from mqttd.service import makeBrokerService

LISTENER = "[listener:l]\nendpoint = tcp:0:interface=127.0.0.1\n"


def credentials(username: str, password: bytes) -> Credentials:
    return Credentials("c", username, password, None, "127.0.0.1", "l")


def build(tmp_path: Path, text: str) -> object:
    ini = tmp_path / "mqttd.ini"
    ini.write_text(LISTENER + text)
    return makeBrokerService(load_config(str(ini)), MemoryReactorClock())


def test_onePluginLoadedTwiceAsNamedInstances(tmp_path: Path) -> None:
    """
    Two C{[plugin:NAME]} sections with C{plugin = passwordfile} are two authenticators, each
    reading its own file: a user of either file is let in by the chain, by its own instance.
    """
    assert cli(["passwd", "-c", "-b", str(tmp_path / "staff.pw"), "alice", "one"]) == 0
    assert cli(["passwd", "-c", "-b", str(tmp_path / "devices.pw"), "sensor", "two"]) == 0
    service = build(
        tmp_path,
        "[auth]\nchain = staff, devices\n"
        "[plugin:staff]\nplugin = passwordfile\nfile = staff.pw\n"
        "[plugin:devices]\nplugin = passwordfile\nfile = devices.pw\n",
    )
    staff, devices = service.broker.authenticators  # type: ignore[attr-defined]
    assert staff is not devices
    assert staff.authenticate(credentials("alice", b"one")) == Allow("alice")
    assert staff.authenticate(credentials("sensor", b"two")) is None
    assert devices.authenticate(credentials("sensor", b"two")) == Allow("sensor")
    assert devices.authenticate(credentials("alice", b"one")) is None


def test_observersChainWithTwoInstances(tmp_path: Path) -> None:
    """
    C{[observers] chain} makes the named plugins the broker's observers; the webhook plugin
    loaded twice posts to two URLs.
    """
    service = build(
        tmp_path,
        "[observers]\nchain = audit, billing\n"
        "[plugin:audit]\nplugin = webhook\nurl = http://127.0.0.1:9/audit\n"
        "[plugin:billing]\nplugin = webhook\nurl = http://127.0.0.1:9/billing\n",
    )
    audit, billing = service.broker.observers  # type: ignore[attr-defined]
    assert audit is not billing
    assert type(audit) is type(billing)


def test_instanceOptionErrorsNameTheInstanceSection(tmp_path: Path) -> None:
    """A bad option of an instance is reported against the instance's own section."""
    with pytest.raises(ConfigError) as e:
        build(tmp_path, "[auth]\nchain = staff\n[plugin:staff]\nplugin = passwordfile\n")
    assert (e.value.section, e.value.key) == ("plugin:staff", "file")


def test_unknownPluginKindRefused(tmp_path: Path) -> None:
    """C{plugin = NAME} naming no plugin stops start-up at that key."""
    with pytest.raises(ConfigError) as e:
        build(tmp_path, "[auth]\nchain = staff\n[plugin:staff]\nplugin = pasword\nfile = x\n")
    assert (e.value.section, e.value.key) == ("plugin:staff", "plugin")
    assert "unknown plugin 'pasword'" in e.value.why


def test_unusedPluginSectionRefused(tmp_path: Path) -> None:
    """
    A C{[plugin:NAME]} section no chain names (here the ACL plugin, configured but left out of
    C{[acl] chain}) stops start-up instead of leaving the broker without it in silence.
    """
    (tmp_path / "acl").write_text("topic read #\n")
    with pytest.raises(ConfigError) as e:
        build(tmp_path, "[plugin:aclfile]\nfile = acl\n")
    assert (e.value.section, e.value.key) == ("plugin:aclfile", None)
    assert "no chain uses this plugin" in str(e.value)


def test_missingPluginDirectoryRefused(tmp_path: Path) -> None:
    """A C{[plugins] paths} directory that does not exist is a ConfigError at that key."""
    ini = tmp_path / "mqttd.ini"
    ini.write_text(LISTENER + "[plugins]\npaths = no-such-dir\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(ini))
    assert (e.value.section, e.value.key) == ("plugins", "paths")
    assert "no such directory: 'no-such-dir'" in e.value.why
