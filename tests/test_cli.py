"""
The C{mqttd} command as an operator meets it: its version, its messages where a traceback used to
be, C{mqttd scram list/delete}, and C{mqttd groups} member parsing and read-only listing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mqttd
from mqttd.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent


def runMqttd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """
    C{python -m mqttd ARGS} from this working tree, in a new session so that it has no
    controlling terminal and a password prompt reads the (empty) standard input.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "mqttd", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )


def test_version(tmp_path: Path) -> None:
    """C{mqttd --version} prints the package version and exits 0."""
    result = runMqttd("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"mqttd {mqttd.__version__}"


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["passwd", "-c", "-b", "{tmp}/no/such/dir/pw", "alice", "secret"],
            "mqttd passwd: cannot write {tmp}/no/such/dir/pw: No such file or directory",
        ),
        (
            ["scram", "add", "{tmp}/no/such/x", "alice", "secret"],
            "mqttd scram: cannot write {tmp}/no/such/x: No such file or directory",
        ),
        (
            ["passwd", "-c", "{tmp}/pw", "alice"],
            "mqttd passwd: no password given (end of input)",
        ),
        (
            ["scram", "add", "{tmp}/scram", "alice"],
            "mqttd scram: no password given (end of input)",
        ),
    ],
)
def test_errorsAreOneLineNotTracebacks(tmp_path: Path, args: list[str], expected: str) -> None:
    """
    A password file in a missing directory, and end of input at the password prompt, end
    C{mqttd passwd} and C{mqttd scram add} with status 1 and one line saying what is wrong,
    and nothing is written.
    """
    result = runMqttd(*(a.format(tmp=tmp_path) for a in args), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == expected.format(tmp=tmp_path)
    assert not (tmp_path / "pw").exists()
    assert not (tmp_path / "scram").exists()


def test_scramListAndDelete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """
    C{mqttd scram list FILE} prints the users; C{mqttd scram delete FILE USER} removes one,
    and refuses (status 1) a user that is not there.
    """
    path = str(tmp_path / "scram")
    assert cli(["scram", "add", "-i", "4096", path, "alice", "one"]) == 0
    assert cli(["scram", "add", path, "bob", "two"]) == 0
    capsys.readouterr()
    assert cli(["scram", "list", path]) == 0
    assert capsys.readouterr().out.splitlines() == ["alice", "bob"]
    assert cli(["scram", "delete", path, "alice"]) == 0
    assert cli(["scram", "list", path]) == 0
    assert capsys.readouterr().out.splitlines() == ["bob"]
    assert cli(["scram", "delete", path, "alice"]) == 1
    assert capsys.readouterr().err.strip() == "mqttd scram: user alice not found"
    assert cli(["scram", "list", str(tmp_path / "missing")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_groupsMemberQoSParsed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """
    C{mqttd groups add chat carol:7} is refused as a QoS that is not 0, 1 or 2 instead of adding
    a member named C{carol:7}, and creates no file; C{carol:1} sets carol's QoS, and
    C{dev:7:0} is how a member whose name ends in C{:7} is written.
    """
    path = tmp_path / "groups.db"
    assert cli(["groups", "--file", str(path), "add", "chat", "carol:7"]) == 1
    assert "QoS 7 is not 0, 1 or 2" in capsys.readouterr().err
    assert not path.exists()
    assert cli(["groups", "--file", str(path), "add", "chat", "carol:1", "dev:7:0"]) == 0
    capsys.readouterr()
    assert cli(["groups", "--file", str(path), "list", "chat"]) == 0
    assert '"carol": 1' in capsys.readouterr().out


def test_groupsListCreatesNothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """
    C{mqttd groups --config X list} on a fresh installation lists no groups and leaves no
    C{groups.db} (nor its directory) behind for a broker to find; a named group is not found.
    """
    config = tmp_path / "mqttd.ini"
    config.write_text(
        "[listener:a]\nendpoint = tcp:1883\n[plugin:virtual_groups]\npath = data/groups.db\n"
    )
    assert cli(["groups", "--config", str(config), "list"]) == 0
    assert capsys.readouterr().out == ""
    assert cli(["groups", "--config", str(config), "list", "chat"]) == 1
    assert "no group 'chat'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mqttd.ini"]
