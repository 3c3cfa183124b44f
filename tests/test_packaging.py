"""
What the README's install (C{pip install .}) puts in site-packages: every module
and data file of the checkout, since the other tests import the checkout and
would not notice a package left out of C{pyproject.toml}.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _shipped(root: Path, top: str) -> set[str]:
    """The source and data files under C{top}, relative to C{root}."""
    return {
        str(p.relative_to(root))
        for p in (root / top).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.name != "dropin.cache"
    }


def test_installCarriesEveryModuleAndDataFile(tmp_path: Path) -> None:
    """
    C{pip install .} installs every file of C{mqttd/} (bridge, http, sn and
    the dashboard's static files included) and every shipped plugin as
    C{mqttd/plugins/}, so a configuration that uses any of them runs from an
    installed copy as it does from the checkout.
    """
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), "."],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    expected = _shipped(ROOT, "mqttd") | {
        "mqttd/plugins/" + name for name in (p.name for p in (ROOT / "plugins").glob("*.py"))
    }
    missing = expected - _shipped(target, "mqttd")
    assert not missing, f"left out of the installed package: {sorted(missing)}"
    assert (target / "twisted" / "plugins" / "mqttd_plugin.py").is_file()
