"""
C{workers = N}: one machine's cores serving one port.  The process C{twistd mqttd} starts is
worker 1 and starts workers 2 to N as child processes (C{python -m twisted mqttd}, restarted
if they die); each is a cluster node named C{NODE-i} on the same Redis, and each opens every
TCP listener itself with C{SO_REUSEPORT}, so the kernel spreads new connections over them.

Twisted's endpoints cannot set C{SO_REUSEPORT}, so L{ReusePortEndpoint} makes the listening
socket itself and hands it to the reactor (C{adoptStreamPort}).
"""

from __future__ import annotations

import os
import re
import socket
import sys
from contextlib import suppress

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import (
    IListeningPort,
    IProcessTransport,
    IProtocolFactory,
    IReactorProcess,
    IReactorSocket,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mqttd.transports.tcp import adoptPort, leanReactor

# Which worker a child process is (2 to N); absent in the process the operator started.
WORKER_VARIABLE = "MQTTD_CLUSTER_WORKER"
# An endpoint string's fields are separated by colons not escaped with a backslash.
_FIELD = re.compile(r"(?<!\\):")


def workerNumber() -> int:
    """This process's worker number: 1 unless started as another worker."""
    text = os.environ.get(WORKER_VARIABLE, "1")
    return int(text) if text.isdigit() and int(text) > 0 else 1


def nodeName(node: str, workers: int, worker: int) -> str:
    """The cluster node name of worker C{worker} of C{node}."""
    return node if workers == 1 else f"{node}-{worker}"


def parseTCP(description: str) -> tuple[socket.AddressFamily, int, str, int]:
    """
    Read a C{tcp:} or C{tcp6:} endpoint string.

    @return: address family, port, interface and backlog.
    @raise ValueError: it is another kind of endpoint, which workers cannot share.
    """
    fields = [f.replace("\\:", ":") for f in _FIELD.split(description)]
    kind = fields[0]
    if kind not in ("tcp", "tcp6"):
        raise ValueError(
            f"workers share tcp: and tcp6: listeners only (SO_REUSEPORT); got {description!r}"
        )
    family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
    options: dict[str, str] = {}
    positional: list[str] = []
    for field in fields[1:]:
        name, equals, value = field.partition("=")
        if equals:
            options[name] = value
        else:
            positional.append(field)
    port = options.get("port", positional[0] if positional else "")
    interface = options.get("interface", "::" if family == socket.AF_INET6 else "0.0.0.0")
    backlog = options.get("backlog", "50")
    if not port.isdigit() or not backlog.isdigit():
        raise ValueError(f"expected tcp:PORT[:interface=...][:backlog=N]; got {description!r}")
    if int(port) == 0:
        raise ValueError("workers share one fixed port; port 0 gives each its own")
    return family, int(port), interface, int(backlog)


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """A TCP listening endpoint whose socket has C{SO_REUSEPORT} set."""

    def __init__(self, reactor: IReactorSocket, description: str, lean: bool = False) -> None:
        """
        @param lean: accept into mqttd's lean TCP transport (L{mqttd.transports.tcp}), on a
            reactor that can, rather than Twisted's.
        @raise ValueError: C{description} is no C{tcp:} / C{tcp6:} endpoint with a port.
        """
        self.reactor = reactor
        self.family, self.port, self.interface, self.backlog = parseTCP(description)
        self.lean = lean

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        try:
            sock = socket.socket(self.family, socket.SOCK_STREAM)
        except OSError as e:
            return fail(e)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.interface, self.port))
            sock.listen(self.backlog)
            sock.setblocking(False)
            # The port takes a duplicate of the descriptor; this one is closed below.
            port: IListeningPort
            if self.lean and leanReactor(self.reactor):
                port = adoptPort(self.reactor, sock.fileno(), self.family, factory)
            else:
                # Typed for a ServerFactory, it takes any IProtocolFactory, as listenTCP does.
                port = self.reactor.adoptStreamPort(
                    sock.fileno(),
                    self.family,
                    factory,  # type: ignore[arg-type]
                )
        except OSError as e:
            return fail(e)
        finally:
            sock.close()
        return succeed(port)


class _Worker(ProcessProtocol):
    """One worker process: its output goes to the first worker's log, a line at a time."""

    def __init__(self, supervisor: WorkerProcesses, name: str) -> None:
        self.supervisor = supervisor
        self.name = name
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self.supervisor.log.info(
                "[{worker}] {line}", worker=self.name, line=line.decode(errors="replace")
            )

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.supervisor.ended(self)


class WorkerProcesses(Service):
    """
    Runs workers 2 to N: each started again a second after it dies; stopping sends each
    SIGTERM (SIGKILL after C{killTime} seconds) and waits for all to end, so the first worker
    leaves after the others.
    """

    log = Logger()
    killTime = 5.0
    restartDelay = 1.0

    def __init__(
        self, reactor: IReactorProcess, commands: dict[str, tuple[list[str], dict[str, str]]]
    ) -> None:
        """
        @param commands: each worker's name, command line and environment.
        """
        self.reactor = reactor
        self.commands = commands
        self.processes: dict[str, tuple[_Worker, IProcessTransport]] = {}
        self._stopped: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        for name in self.commands:
            self._start(name)

    def _start(self, name: str) -> None:
        if not self.running:
            return
        worker = _Worker(self, name)
        argv, env = self.commands[name]
        transport = self.reactor.spawnProcess(worker, argv[0], argv, env=env)
        self.processes[name] = (worker, transport)

    def ended(self, worker: _Worker) -> None:
        """C{worker}'s process ended."""
        self.processes.pop(worker.name, None)
        if self.running:
            self.log.warn("{worker} ended; started again", worker=worker.name)
            IReactorTime(self.reactor).callLater(self.restartDelay, self._start, worker.name)
        elif not self.processes and self._stopped is not None:
            stopped, self._stopped = self._stopped, None
            stopped.callback(None)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if not self.processes:
            return succeed(None)
        self._stopped = Deferred()
        for _, transport in list(self.processes.values()):
            transport.signalProcess("TERM")
        IReactorTime(self.reactor).callLater(self.killTime, self._kill)
        return self._stopped

    def _kill(self) -> None:
        for _, transport in list(self.processes.values()):
            with suppress(ProcessExitedAlready):
                transport.signalProcess("KILL")


def workerProcesses(reactor: IReactorProcess, configPath: str, workers: int) -> WorkerProcesses:
    """
    The service that runs workers 2 to C{workers} of the configuration at C{configPath}, with
    this process's environment plus the worker's number.
    """
    argv = [
        sys.executable,
        "-m",
        "twisted",
        "--log-format=text",
        "mqttd",
        "--config",
        os.path.abspath(configPath),
    ]
    commands = {
        f"mqttd-worker-{worker}": (argv, {**os.environ, WORKER_VARIABLE: str(worker)})
        for worker in range(2, workers + 1)
    }
    return WorkerProcesses(reactor, commands)
