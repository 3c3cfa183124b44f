"""
Count which normative statements of MQTT 3.1.1 and 5.0 the test suite cites.

A statement counts as covered for a version when a test function's docstring cites
its id, C{[MQTT-x.y.z-n]}, and the test speaks that version.  The two specifications
reuse ids for different statements (121 ids appear in both), so a test is attributed
to a version, not just to an id:

  - a test in a 5.0 module (L{FIVE_MODULES}) speaks 5.0;
  - any other test speaks 3.1.1, and also 5.0 when its docstring (or its class's)
    says "5.0", "MQTT 5" or "level 5"; it speaks 5.0 only when it says so and not
    "3.1.1", "3.1" or "level 4";
  - an id only one specification has means that specification's statement,
    whatever the test speaks (shared subscriptions, 5.0's section 4.8.2, are
    also tested with 3.1.1 clients).

The annotated wire vectors count too: every id in a string of L{tests.vectors}
(3.1.1) or L{tests.vectors5} (5.0) names the rule its vector shows, and the
parametrized codec tests decode, encode or refuse each vector against it.

Run C{python -m tests.spec_coverage} from the project root for the figures, or with
C{--uncited} to list the statements no test cites.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
SPEC = {
    "3.1.1": TESTS / "spec" / "mqtt-v3.1.1-normative.txt",
    "5.0": TESTS / "spec" / "mqtt-v5.0-normative.txt",
}
FIVE_MODULES = frozenset(
    {
        "test_codec5",
        "test_e2e_mqtt5",
        "test_mqtt5_connection",
        "test_mqtt5_messages",
        "test_enhanced_auth",
        "test_e2e_scram",
        "test_conformance5",
    }
)
CITATION = re.compile(r"MQTT-[0-9.]+-[0-9]+")
_SAYS_FIVE = re.compile(r"\b5\.0\b|MQTT 5\b|level 5\b")
_SAYS_THREE = re.compile(r"\b3\.1\.1\b|\b3\.1\b|level [34]\b")


@dataclass(frozen=True)
class Citation:
    statement: str
    version: str
    test: str


def statements(version: str) -> dict[str, str]:
    """The normative statements of C{version}, id to text, as in the copied spec file."""
    found: dict[str, str] = {}
    for line in SPEC[version].read_text(encoding="utf-8").splitlines():
        match = re.match(r"\[(MQTT-[0-9.]+-[0-9]+)\]\s*(.*)", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def _versions(module: str, docstrings: str) -> tuple[str, ...]:
    if module in FIVE_MODULES:
        return ("5.0",)
    # The ids themselves ("MQTT-4.5.0-1", "MQTT-3.1.2-3") must not read as a version.
    docstrings = CITATION.sub("", docstrings)
    if _SAYS_FIVE.search(docstrings):
        return ("3.1.1", "5.0") if _SAYS_THREE.search(docstrings) else ("5.0",)
    return ("3.1.1",)


VECTOR_MODULES = {"vectors": "3.1.1", "vectors5": "5.0"}


def citations() -> Iterator[Citation]:
    """Every id cited by a test function's docstring or a wire vector, with its version."""
    every = {version: statements(version).keys() for version in SPEC}
    for path in sorted(TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for citation in _walk(path.stem, tree, ""):
            owners = [version for version in SPEC if citation.statement in every[version]]
            if len(owners) == 1 and owners[0] != citation.version:
                citation = Citation(citation.statement, owners[0], citation.test)
            yield citation
    for module, version in VECTOR_MODULES.items():
        tree = ast.parse((TESTS / f"{module}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for statement in CITATION.findall(node.value):
                    yield Citation(statement, version, module)


def _walk(module: str, node: ast.AST, outer: str) -> Iterator[Citation]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef):
            yield from _walk(module, child, outer + (ast.get_docstring(child) or ""))
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and child.name.startswith(
            "test"
        ):
            doc = ast.get_docstring(child) or ""
            for version in _versions(module, outer + doc):
                for statement in CITATION.findall(doc):
                    yield Citation(statement, version, f"{module}.{child.name}")


def coverage() -> dict[str, tuple[set[str], dict[str, str]]]:
    """Per version: the ids cited for it and all its statements."""
    cited: dict[str, set[str]] = {version: set() for version in SPEC}
    for citation in citations():
        cited[citation.version].add(citation.statement)
    result = {}
    for version in SPEC:
        every = statements(version)
        result[version] = (cited[version] & every.keys(), every)
    return result


def main(argv: list[str]) -> int:
    for version, (cited, every) in coverage().items():
        share = 100 * len(cited) / len(every)
        print(f"MQTT {version}: {len(cited)} of {len(every)} statements cited ({share:.1f} %)")
        if "--uncited" in argv:
            for statement in sorted(every.keys() - cited, key=_order):
                print(f"  {statement} {every[statement][:100]}")
    return 0


def _order(statement: str) -> list[int]:
    return [int(part) for part in re.findall(r"[0-9]+", statement)]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
