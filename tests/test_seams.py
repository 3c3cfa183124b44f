"""
The broker core's parts and the seams a cluster replaces (issue 16): each
in-process implementation provides its interface, and the parts import one
another in one direction only.
"""

from __future__ import annotations

import ast
from pathlib import Path

from zope.interface.verify import verifyObject

from mqttd.codec.packets import Publish
from mqttd.interfaces import IRetainedStore, IRouteTable, ISessionRegistry
from mqttd.message import Message
from tests.harness import World

MQTTD = Path(__file__).resolve().parent.parent / "mqttd"

# The core's parts and the connection above them, lowest first: each may import those before it,
# never one after.
CORE = ["observers", "policy", "router", "sessions", "publishing", "subscribing"]
# handlers.py sits below the two packet-handler parts, which subclass it; the broker never names it.
LAYERS = [*CORE[:4], "handlers", *CORE[4:], "broker", "handshake", "protocol"]


def _runtimeImports(module: str) -> set[str]:
    # The mqttd modules a module imports when it runs (imports under TYPE_CHECKING aside).
    tree = ast.parse((MQTTD / f"{module}.py").read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                name = child.module or ""
                if child.level == 1:
                    found.add(name.split(".")[0])
                elif name.startswith("mqttd."):
                    found.add(name.split(".")[1])
            visit(child)

    visit(tree)
    return found


def test_partsImportDownwardOnly() -> None:
    """No part of the core imports a part above it, so no import cycle can close."""
    for index, module in enumerate(LAYERS):
        above = set(LAYERS[index:])
        assert _runtimeImports(module) & above == set(), module


def test_layerCheckSeesImports() -> None:
    """The import check reads real imports: the broker is seen importing its parts."""
    assert set(CORE) <= _runtimeImports("broker")
    assert {"broker", "handshake"} <= _runtimeImports("protocol")


# Reading the configuration: every part is built with its values, so it sits below them all.
CONFIGURATION = ["configvalues", "config", "listenerconfig"]


def test_configurationImportsNoPart() -> None:
    """
    Reading the configuration (config.py, and the modules it parses values and listener
    sections with) imports no part of the core nor the connection: they import it, never
    the other way.
    """
    for module in CONFIGURATION:
        assert _runtimeImports(module) & set(LAYERS) == set(), module


def test_configurationCheckSeesImports() -> None:
    """The check reads config.py's imports, the one made inside load_config included."""
    assert {"configvalues", "listenerconfig"} <= _runtimeImports("config")
    assert "config" in _runtimeImports("listenerconfig")


def test_routerIsTheRouteTable() -> None:
    """
    The in-process route table provides L{IRouteTable}, and what it records
    is what routing uses: a subscription added through it is delivered to,
    removed through it is not.
    """
    world = World()
    router = world.broker.router
    assert verifyObject(IRouteTable, router)
    subscriber = world.connect("sub")
    publisher = world.connect("pub")
    assert router.addSubscription("t/+", "sub", 1) is True
    assert router.addSubscription("t/+", "sub", 1) is False
    publisher.send(Publish("t/1", b"x"))
    assert [p.payload for p in subscriber.publishes()] == [b"x"]
    assert router.removeSubscription("t/+", "sub") is True
    assert router.route(Message("t/1", b"y")) is False
    assert subscriber.publishes() == []


def test_retainedStoreInterface() -> None:
    """The in-process retained store, the one the broker keeps, provides L{IRetainedStore}."""
    world = World()
    retained = world.broker.retained
    assert verifyObject(IRetainedStore, retained)
    world.connect("pub").send(Publish("r/1", b"kept", retain=True))
    assert len(retained) == 1
    assert retained.get("r/1") is not None
    assert [m.topic for m in retained.matching("r/#")] == ["r/1"]


def test_sessionRegistryInterface() -> None:
    """
    The in-process session registry provides L{ISessionRegistry}, and its
    table is the one the broker and the router read: a second connection
    with the same client id takes the session over [MQTT-3.1.4-2].
    """
    world = World()
    registry = world.broker.registry
    assert verifyObject(ISessionRegistry, registry)
    assert registry.sessions is world.broker.sessions is world.broker.router.sessions
    first = world.connect("c", clean=False)
    session = registry.sessions["c"]
    world.connect("c", clean=False)
    assert registry.sessions["c"] is session
    assert first.transport.disconnecting
    assert registry.endSession("c") is True
    assert "c" not in world.broker.sessions
