"""
Who persistent sessions journal to: the configured store, or, without one, nobody.  The
broker's own in-memory store is one no other process can restore from, so mirroring every
delivery's QoS 1 state into it (once per message and recipient) was work and memory for
nothing; the sessions themselves keep that state.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.testing import MemoryReactorClock

from mqttd.config import load_config
from mqttd.service import makeBrokerService
from mqttd.store import MemoryStore
from tests.conftest import Clients
from tests.e2e import RunningBroker


def test_noStoreNoJournal(e2e_broker: RunningBroker, clients: Clients) -> None:
    """
    Without a store, QoS 1 messages for an absent persistent subscriber wait in its session
    alone, and still all arrive, in order, when it comes back [MQTT-3.1.2-5, MQTT-4.6.0-6].
    """
    first = clients("keeper", clean=False)
    assert first.subscribe("away/t", 1) == 1
    first.disconnect()
    e2e_broker.wait_gone("keeper")
    pub = clients("pub")
    payloads = [b"m%d" % i for i in range(5)]
    for payload in payloads:
        pub.publish("away/t", payload, 1)

    def journaled() -> int:
        store = e2e_broker.broker.store
        assert isinstance(store, MemoryStore)
        kept = store.sessions.get("keeper")
        return 0 if kept is None else len(kept.queue) + len(kept.inflight)

    def waiting() -> int:
        return len(e2e_broker.broker.sessions["keeper"].pending or ())

    assert e2e_broker.call(waiting) == len(payloads)
    assert e2e_broker.call(journaled) == 0
    again = clients("keeper", clean=False)
    assert [m.payload for m in again.wait_for(len(payloads))] == payloads


def test_serviceWithoutStoreSectionLeavesTheBrokerItsOwn(tmp_path: Path) -> None:
    """A configuration without [store] builds a broker on an in-memory store of its own."""
    ini = tmp_path / "mqttd.ini"
    ini.write_text("[listener:a]\nendpoint = tcp:1883\n")
    service = makeBrokerService(load_config(str(ini)), MemoryReactorClock())
    assert isinstance(service.broker.store, MemoryStore)
    assert service.broker.journal is None
