"""
The spec audit kept true: at least 90 % of the normative statements of MQTT 3.1.1 and of
MQTT 5.0 are cited by tests (counted by L{tests.spec_coverage}), and docs/conformance.md lists
exactly the statements left uncited, with figures that match the count.
"""

from __future__ import annotations

import re

import pytest

from tests import spec_coverage

DOC = spec_coverage.ROOT / "docs" / "conformance.md"


def _section(version: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"### MQTT {version}\n")
    end = text.find("\n## ", start)
    following = text.find("\n### ", start + 1)
    ends = [e for e in (end, following) if e != -1]
    return text[start : min(ends)] if ends else text[start:]


def _listed(version: str) -> set[str]:
    return set(re.findall(r"^\| (MQTT-[0-9.]+-[0-9]+) \|", _section(version), re.MULTILINE))


@pytest.mark.parametrize("version", ["3.1.1", "5.0"])
def test_at_least_90_percent_cited(version: str) -> None:
    """Tests cite at least 90 % of the version's normative statements."""
    cited, every = spec_coverage.coverage()[version]
    assert len(every) == {"3.1.1": 141, "5.0": 251}[version]
    assert len(cited) >= 0.9 * len(every), f"{len(cited)} of {len(every)}"


@pytest.mark.parametrize("version", ["3.1.1", "5.0"])
def test_conformance_doc_lists_exactly_the_uncited(version: str) -> None:
    """
    docs/conformance.md gives a reason for every uncited statement and for no cited one; a
    test that starts citing a listed statement must take it off the list (and update the figures).
    """
    cited, every = spec_coverage.coverage()[version]
    uncited = every.keys() - cited
    listed = _listed(version)
    assert listed - uncited == set(), "cited now: remove from docs/conformance.md"
    assert uncited - listed == set(), "uncited: add to docs/conformance.md with the reason"
    share = f"{100 * len(cited) / len(every):.1f} %"
    row = f"| MQTT {version} | {len(every)} | {len(cited)} | {share} |"
    assert row in DOC.read_text(encoding="utf-8"), f"update the figures: {row}"


def test_citations_name_real_statements() -> None:
    """Every id a test cites exists in the specification of the version it is attributed to."""
    statements = {version: spec_coverage.statements(version) for version in spec_coverage.SPEC}
    unknown = sorted(
        f"{c.test}: {c.statement} ({c.version})"
        for c in spec_coverage.citations()
        if c.statement not in statements[c.version]
    )
    assert unknown == []


def test_spec_copies_match_shared() -> None:
    """tests/spec holds the shared lists unchanged, when ../shared is there to compare."""
    shared = spec_coverage.ROOT.parent / "shared" / "spec"
    if not shared.is_dir():
        pytest.skip("no ../shared/spec next to the project")
    for path in spec_coverage.SPEC.values():
        assert path.read_bytes() == (shared / path.name).read_bytes()
