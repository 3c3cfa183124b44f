"""
Fixtures for the end-to-end tests (tests/e2e.py): a broker on a real socket
and the clients connected to it, all torn down after each test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests import e2e, listeners


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "broker_config(**overrides): BrokerConfig overrides for the e2e broker"
    )
    config.addinivalue_line(
        "markers", "sn_listener(**keys): ListenerConfig keys of tests/test_e2e_sn.py's gateway"
    )


@pytest.fixture(scope="session")
def twisted_reactor() -> Iterator[None]:
    """The global reactor running in a daemon thread for the whole session."""
    e2e.start_reactor()
    yield
    e2e.stop_reactor()


@pytest.fixture
def e2e_broker(
    twisted_reactor: None, request: pytest.FixtureRequest
) -> Iterator[e2e.RunningBroker]:
    """
    A fresh broker on 127.0.0.1 and an ephemeral port; BrokerConfig overrides
    come from a C{broker_config} marker.  Teardown closes the listening port
    and every connection, stops the broker, and fails the test if anything
    was logged as an error inside the reactor meanwhile.
    """
    marker = request.node.get_closest_marker("broker_config")
    overrides: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    e2e.REACTOR.takeErrors()
    running = e2e.start_broker(**overrides)
    yield running
    running.stop()
    errors = e2e.REACTOR.takeErrors()
    assert not errors, "errors logged in the reactor:\n" + "\n".join(errors)


class Clients:
    """Makes clients of one broker and closes them all at teardown."""

    def __init__(self, broker: e2e.RunningBroker) -> None:
        self.broker = broker
        self._paho: list[e2e.Client] = []
        self._raw: list[e2e.RawClient] = []

    def __call__(self, client_id: str, **kwargs: Any) -> e2e.Client:
        """A paho client; keyword arguments as for L{e2e.client}."""
        c = e2e.client(self.broker.port, client_id, **kwargs)
        self._paho.append(c)
        return c

    def raw(self) -> e2e.RawClient:
        r = e2e.RawClient(self.broker.port)
        self._raw.append(r)
        return r

    def close(self) -> None:
        for c in self._paho:
            c.close()
        for r in self._raw:
            r.close()


@pytest.fixture
def clients(e2e_broker: e2e.RunningBroker) -> Iterator[Clients]:
    """Client factory for C{e2e_broker}: C{clients("id", clean=False)}, C{clients.raw()}."""
    made = Clients(e2e_broker)
    yield made
    made.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> listeners.PKI:
    """A CA, server and client certificates, shared by a test module (key generation is slow)."""
    return listeners.make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def listen(twisted_reactor: None) -> Iterator[listeners.Listen]:
    """
    C{listen(listener, **brokerOverrides)} starts a broker on a full C{[listener:NAME]} (TLS,
    WebSocket, PROXY); all are stopped at teardown, which fails the test if anything was logged
    as an error in the reactor meanwhile.
    """
    running: list[e2e.RunningBroker] = []
    e2e.REACTOR.takeErrors()

    def start(listener: listeners.ListenerConfig, **overrides: Any) -> listeners.Started:
        started = listeners.start_listener(listener, **overrides)
        running.append(started.broker)
        return started

    yield start
    for broker in running:
        broker.stop()
    errors = e2e.REACTOR.takeErrors()
    assert not errors, "errors logged in the reactor:\n" + "\n".join(errors)
