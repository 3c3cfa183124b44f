"""
Damaged store files are never loaded quietly: a truncated or corrupt file log, a corrupt SQLite
file, or an empty file where a store is expected stops start-up with one line naming the file
and the damage; with C{recover = true} a copy of the damaged file is kept beside it, the store
starts from what can be read, and the log says what was dropped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher

from mqttd.config import BrokerConfig
from mqttd.interfaces import PluginConfigError, PluginContext
from mqttd.message import Message
from mqttd.plugin_loader import findPlugins
from tests import e2e
from tests.test_store import closed, opened, restored

pytestmark = pytest.mark.usefixtures("twisted_reactor")

RETAINED = 200


def build(kind: str, path: Path, recover: bool = False) -> Any:
    return findPlugins()[kind].build(
        {"path": "store", "recover": "true" if recover else "false"},
        PluginContext(e2e.reactor, str(path), BrokerConfig()),
    )


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Every log line emitted meanwhile."""
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        lines.append(formatEvent(event) or "")

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


def filled(kind: str, path: Path) -> Path:
    """A closed store holding L{RETAINED} retained messages, written one commit each."""
    store = opened(lambda p: build(kind, p), path)
    for n in range(RETAINED):
        e2e.in_reactor(lambda n=n: store.retainedSet(Message(f"r/{n}", b"x" * 100, 1, True)))
        e2e.in_reactor(store.flush)
    closed(store)
    return path / "store"


def damagedCopies(path: Path) -> list[Path]:
    return sorted(path.glob("store.damaged-*"))


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_fileTruncatedRefused(tmp_path: Path, fraction: float) -> None:
    """
    A log cut to half or nine tenths of its length is not a crash's torn end (the header says
    how much was written and synced): start-up stops with one line naming the file, its length
    and where the cut falls, and the file is left as it was, for the operator to look at.
    """
    log = filled("file", tmp_path)
    data = log.read_bytes()
    log.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(PluginConfigError) as raised:
        build("file", tmp_path)
    why = raised.value.why
    assert why.startswith(f"{log}: truncated: {int(len(data) * fraction)} bytes of the ")
    assert "set recover = true" in why and "\n" not in why
    assert log.read_bytes() == data[: int(len(data) * fraction)]


def test_fileCutAtARecordRefused(tmp_path: Path) -> None:
    """A log cut exactly between two records, which leaves no torn record, is refused too."""
    log = filled("file", tmp_path)
    data = log.read_bytes()
    log.write_bytes(data[: len(data) - 3 * (len(data) - 20) // RETAINED])
    with pytest.raises(PluginConfigError, match=r"truncated: \d+ bytes of the \d+ written"):
        build("file", tmp_path)


def test_fileTruncatedRecovered(tmp_path: Path, logged: list[str]) -> None:
    """
    With recover = true a truncated log starts the store from the records before the cut; the
    damaged file is kept beside the log, and one warning says what was kept and dropped.
    """
    log = filled("file", tmp_path)
    data = log.read_bytes()
    cut = data[: len(data) // 2]
    log.write_bytes(cut)
    store = opened(lambda p: build("file", p, recover=True), tmp_path)
    topics = {m.topic for m in restored(store).retained}
    assert 0 < len(topics) < RETAINED
    assert topics == {f"r/{n}" for n in range(len(topics))}
    (copy,) = damagedCopies(tmp_path)
    assert copy.read_bytes() == cut
    (warning,) = [line for line in logged if "recover = true" in line]
    assert str(log) in warning and str(copy) in warning
    assert f"replayed {len(topics)} records" in warning
    assert f"{len(data) - len(cut)} missing bytes" in warning
    closed(store)
    # The recovered log is a good one: it opens without recover.
    assert len(restored(opened(lambda p: build("file", p), tmp_path)).retained) == len(topics)


def test_fileCorruptRecovered(tmp_path: Path, logged: list[str]) -> None:
    """
    A record damaged in the middle of the log is refused naming it; with recover = true only
    that record is dropped, and the ones after it are kept.
    """
    log = filled("file", tmp_path)
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0xFF
    log.write_bytes(bytes(data))
    with pytest.raises(PluginConfigError, match=r"corrupt log: record \d+ at byte \d+ fails"):
        build("file", tmp_path)
    store = opened(lambda p: build("file", p, recover=True), tmp_path)
    assert len(restored(store).retained) == RETAINED - 1
    (warning,) = [line for line in logged if "recover = true" in line]
    assert "dropped 1 that could not be read" in warning
    assert len(damagedCopies(tmp_path)) == 1
    closed(store)


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_emptyFileRefused(tmp_path: Path, kind: str, logged: list[str]) -> None:
    """
    An empty file where a store is expected (mqttd never leaves one: a new store is made whole)
    stops start-up rather than silently starting empty; with recover = true the store starts
    empty, keeping the empty file and saying so.
    """
    path = tmp_path / "store"
    path.write_bytes(b"")
    with pytest.raises(PluginConfigError) as raised:
        build(kind, tmp_path)
    assert raised.value.why.startswith(f"{path}: empty file where ")
    assert "set recover = true" in raised.value.why
    store = opened(lambda p: build(kind, p, recover=True), tmp_path)
    assert restored(store).retained == []
    assert len(damagedCopies(tmp_path)) == 1
    assert any("recover = true" in line and str(path) in line for line in logged)
    closed(store)


def test_sqliteCorruptRecovered(tmp_path: Path, logged: list[str]) -> None:
    """
    An SQLite store whose pages are damaged is refused; with recover = true the tables that can
    still be read are copied into a new file, the damaged one is kept, and the log names what
    was dropped.
    """
    path = filled("sqlite", tmp_path)
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(path.read_bytes())
    # A whole page past the schema's, in the retained table's B-tree: not a page any more.
    page = 4096
    start = len(data) // page // 2 * page
    data[start : start + page] = b"\x55" * page
    path.write_bytes(bytes(data))
    with pytest.raises(PluginConfigError) as raised:
        build("sqlite", tmp_path)
    assert raised.value.why.startswith(f"{path}: ")
    assert "set recover = true" in raised.value.why
    store = opened(lambda p: build("sqlite", p, recover=True), tmp_path)
    count = len(restored(store).retained)
    (warning,) = [line for line in logged if "recover = true" in line]
    assert "kept the damaged file as" in warning
    assert f"{count} retained" in warning or (count == 0 and "retained" in warning)
    assert len(damagedCopies(tmp_path)) == 1
    closed(store)
