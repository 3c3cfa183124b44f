"""
docs/virtual-groups.md's tested session and the README's "Security model" session, run as
written: the document's users made with C{mqttd passwd}, its ACL file and C{mqttd.ini} built into
the broker service as C{twistd mqttd} builds them, then each shell session of C{mosquitto_rr},
C{mosquitto_sub} and C{mosquitto_pub} run by bash, whose output must be the document's, line for
line; only the port differs.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from mqttd.config import load_config
from mqttd.service import makeBrokerService
from tests import e2e
from tests.mosquitto import freePort

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "virtual-groups.md"
README = ROOT / "README.md"


def blocks(text: str) -> list[tuple[str, str]]:
    """The fenced blocks of C{text}, as (language, body), in order."""
    return re.findall(r"```(\w*)\n(.*?)```", text, re.S)


def section(path: Path, heading: str) -> str:
    text = path.read_text()
    part = text[text.index(heading) :]
    return part[: part.index("\n## ", 1)]


def runSession(tmp_path: Path, session: str, strict: bool) -> tuple[str, str]:
    """
    Make the users, ACL and C{mqttd.ini} of docs/virtual-groups.md's tested section, build and
    start the broker service from them, run C{session} with bash against it, and stop it.

    @param strict: run bash with C{-e -o pipefail}: every command must succeed.
    @return: what the session printed (stdout and stderr, as a terminal shows them) and the
        expected output block of the document's section.
    """
    (_, passwd), (_, acl), (_, ini), _, (_, output) = blocks(section(DOC, "## The rules, tested"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for line in passwd.splitlines():
        command = line.replace("mqttd passwd", f"{sys.executable} -m mqttd passwd", 1)
        subprocess.run(command, shell=True, cwd=tmp_path, env=env, check=True)
    (tmp_path / "acl").write_text(acl)
    port = freePort()
    (tmp_path / "mqttd.ini").write_text(ini.replace("tcp:1883:", f"tcp:{port}:"))
    config = load_config(str(tmp_path / "mqttd.ini"))
    e2e.REACTOR.takeErrors()
    service: Any = e2e.in_reactor(lambda: makeBrokerService(config, e2e.reactor))
    e2e.in_reactor(service.startService)
    try:
        e2e.wait_until(lambda: _listening(port), "the broker to listen")
        options = ["-e", "-o", "pipefail"] if strict else []
        ran = subprocess.run(
            ["bash", *options, "-c", session.replace("-p 1883", f"-p {port}")],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=60,
            check=False,
        )
    finally:
        e2e.in_reactor(service.stopService)
    errors = e2e.REACTOR.takeErrors()
    assert not errors, "errors logged in the reactor:\n" + "\n".join(errors)
    return ran.stdout.decode(), output


def test_whoMayDoWhatSessionRunsAsWritten(tmp_path: Path, twisted_reactor: None) -> None:
    """
    The session of "The rules, tested" prints what the document says: alice's groups and roles
    in one request; bob refused every server topic and refused adding himself to a group he
    does not own; carol's message kept for the absent alice (receipt 0x00), one to nobody
    answered 0x10; alice's first connection given the inbox; bob, added by the owner, given
    the last two messages; carol leaving; bob refused (0x87) in an owners-only channel.
    """
    session = blocks(section(DOC, "## The rules, tested"))[3][1]
    printed, expected = runSession(tmp_path, session, strict=True)
    assert printed.splitlines() == expected.splitlines(), printed


def test_readmeSecurityModelRunsAsWritten(tmp_path: Path, twisted_reactor: None) -> None:
    """
    The README's "Security model" session prints what the README says: bob refused alice's
    persistent session (CONNACK 5), a wrong password and an unknown user answered alike (5 at
    3.1.1, 0x86 at 5.0), every server topic refused, a receipt of 0x10.
    """
    (_, session), (_, expected) = blocks(section(README, "## Security model"))
    printed, _ = runSession(tmp_path, session, strict=False)
    assert printed.splitlines() == expected.splitlines(), printed


def _listening(port: int) -> bool:
    try:
        socket.create_connection((e2e.HOST, port), timeout=1).close()
    except OSError:
        return False
    return True
