"""
The README's three-node cluster example, run as written by bash (only its ports made free):
Redis and three C{twistd mqttd} nodes started by the block itself, a message published on
node a printed by a subscriber on node b, the retained one by a subscriber on node c.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.mosquitto import freePort

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# Only there so that a broken example cannot hang the run.
TIMEOUT = 120


def clusterExample() -> str:
    text = README.read_text()
    part = text[text.index("### Cluster: `[cluster]`") :]
    match = re.search(r"```sh\n(.*?)```", part, re.S)
    assert match is not None, "no sh block in the README's Cluster section"
    return match.group(1)


def test_readmeClusterExampleRunsAsWritten(tmp_path: Path) -> None:
    """
    The block starts Redis and nodes a, b and c; b's subscriber prints both messages published
    on a, and c's the retained one, exactly as the comments say; the block's last line stops
    every process it started.
    """
    script = clusterExample()
    for fixed in ("6379", "1883", "1884", "1885"):
        assert fixed in script
        script = script.replace(fixed, str(freePort()))
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        "PYTHONPATH": str(ROOT),
    }
    try:
        result = subprocess.run(
            ["bash", "-e", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    finally:
        # Whatever the block left running if it failed before its last line.
        for pidfile in tmp_path.glob("*.pid"):
            try:
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass
    logs = "\n".join(f"{p.name}:\n{p.read_text()}" for p in tmp_path.glob("*.log"))
    assert result.returncode == 0, result.stderr + logs
    assert result.stdout.splitlines() == [
        "sensors/t1 21.5",
        "sensors/t2 19.0",
        "sensors/t1 21.5",
    ], result.stderr + logs
