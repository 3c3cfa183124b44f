"""
The running broker as a Twisted service: the broker core first, then one listening service per
configured listener (L{mqttd.listening}), bridges last; and building it all from the
configuration.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import (
    IProtocolFactory,
    IReactorCore,
    IReactorFromThreads,
    IReactorProcess,
    IReactorSocket,
    IReactorTime,
    IReactorUDP,
    IStreamServerEndpoint,
)
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from mqttd.broker import Broker
from mqttd.config import Config, ConfigError
from mqttd.interfaces import (
    IAuthenticator,
    IAuthorizer,
    IBrokerAware,
    IBrokerObserver,
    IMessageStore,
    IReloadable,
    ISubscriberSelector,
    ReloadError,
)
from mqttd.listening import ListenerError, ListenerService, listenerFactory, serverEndpoint
from mqttd.plugin_loader import Plugins
from mqttd.protocol import MQTTServerFactory
from mqttd.router import Router
from mqttd.transports import TLSFileError

if TYPE_CHECKING:
    from mqttd.transports.tls import ServerTLS


class BrokerService(MultiService):
    """
    Owns the broker and the listeners feeding it.

    The listeners bind at start-up, so that one that cannot be opened stops it (L{ListenerError}),
    but accept connections only once the broker has restored its store, which with a durable
    store finishes on a thread after the reactor runs: no connection ever reaches a broker whose
    sessions and retained messages are not back yet.  The other services (bridges, samplers)
    start then too.  Everything stops before the broker, which then closes its store.
    """

    log = Logger()

    def __init__(self, broker: Broker, reactor: IReactorFromThreads | None = None) -> None:
        super().__init__()
        self.broker = broker
        self.reactor = reactor
        # Listener name -> its mqttd-managed TLS, reloaded on SIGHUP.
        self.tls: dict[str, ServerTLS] = {}
        # Plugin name -> a plugin that re-reads its files on SIGHUP.
        self.reloadable: dict[str, IReloadable] = {}
        # Plugins told when the broker starts and stops.
        self.brokerAware: list[IBrokerAware] = []
        # Called once the children started; the listeners accept once all their Deferreds
        # fired (a cluster node has read the cluster's routes).
        self.beforeAccepting: list[Callable[[], Deferred[Any]]] = []
        self._previousHangup: Any = None

    def privilegedStartService(self) -> None:
        # Binding here, before twistd sheds privileges, is what lets --uid run a broker on 1883
        # (or 8883) without root; the listeners accept only once the store is restored.
        Service.privilegedStartService(self)
        self._bind()

    def _bind(self) -> None:
        for listening in self:
            if isinstance(listening, ListenerService):
                listening.bind()

    def startService(self) -> None:
        # An application that never ran privilegedStartService binds here.
        self._bind()
        Service.startService(self)
        for plugin in self.brokerAware:
            plugin.attach(self.broker)
        self.broker.start().addCallbacks(self._restored, self._restoreFailed)
        # Python lets only the main thread set signal handlers; an application running the
        # service elsewhere calls reload itself.
        reloadable = self.tls or self.reloadable
        if reloadable and threading.current_thread() is threading.main_thread():
            self._previousHangup = signal.signal(signal.SIGHUP, self._hangup)

    def _restored(self, ignored: None) -> None:
        # With the memory store this runs inside startService.
        if not self.running:
            return
        for listening in self:
            listening.startService()
        if not self.beforeAccepting:
            self._accept()
            return
        waiting = [maybeDeferred(ready) for ready in self.beforeAccepting]
        DeferredList(waiting).addCallback(lambda _: self._accept())

    def _accept(self) -> None:
        if not self.running:
            return
        for listening in self:
            if isinstance(listening, ListenerService):
                listening.accept()

    def _restoreFailed(self, failure: Failure) -> None:
        # A broker without its sessions would tell returning clients they have none; stop.
        self.log.failure("mqttd cannot start: its store could not be restored", failure)
        self._stopReactor()

    def _listenerFailed(self, error: ListenerError) -> None:
        # An endpoint that failed after start-up returned (one that listens asynchronously):
        # the same one line, and the broker stops rather than run without the listener.
        self.log.critical("mqttd cannot start: {error}", error=str(error))
        self._stopReactor()

    def _stopReactor(self) -> None:
        core = IReactorCore(self.reactor, None)
        if core is not None:
            core.stop()

    def stopService(self) -> Deferred[Any]:
        if self._previousHangup is not None:
            signal.signal(signal.SIGHUP, self._previousHangup)
            self._previousHangup = None
        Service.stopService(self)
        # Every listener stops, started or only bound, and every other service that started,
        # in reverse order as MultiService does, before the broker closes its store.
        stopping = [
            maybeDeferred(child.stopService)
            for child in reversed(list(self))
            if child.running or isinstance(child, ListenerService)
        ]
        d: Deferred[Any] = DeferredList(stopping)
        d.addCallback(lambda _: self.broker.stop())
        d.addCallback(self._detach)
        return d.addCallback(lambda _: self.broker.repeats.stop())

    def _detach(self, ignored: None) -> Deferred[Any]:
        # A plugin may still be writing what it was told last: stopping waits for it.
        return DeferredList([maybeDeferred(plugin.detach) for plugin in self.brokerAware])

    def _hangup(self, signum: int, frame: object) -> None:
        # Signal handlers run between bytecodes, possibly inside the reactor's own code.
        assert self.reactor is not None
        self.reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """What SIGHUP does: L{reloadCertificates}, then L{reloadPlugins}."""
        self.reloadCertificates()
        self.reloadPlugins()

    def reloadPlugins(self) -> None:
        """
        Have every reloadable plugin re-read its files, then drop the broker's cached ACL
        answers.  Connections stay up; a plugin that cannot reload keeps its previous state.
        """
        for name, plugin in self.reloadable.items():
            try:
                plugin.reload()
            except ReloadError as e:
                self.log.error(
                    "plugin {name} not reloaded, keeping its previous state: {why}",
                    name=name,
                    why=str(e),
                )
            except Exception:
                self.log.failure("plugin {name} could not reload", name=name)
            else:
                self.log.info("plugin {name} reloaded", name=name)
        self.broker.authorizationChanged()

    def reloadCertificates(self) -> None:
        """
        Read every TLS listener's certificate, key, CA and CRL files again.  New connections
        use them; connections already up are left as they are.  A listener whose files cannot be
        used keeps its previous ones, so a half-copied renewal never takes a listener down.
        """
        for name, tls in self.tls.items():
            try:
                tls.reload()
            except TLSFileError as e:
                self.log.error(
                    "listener {name}: keeping the previous certificates: {key}: {why}",
                    name=name,
                    key=e.key,
                    why=e.why,
                )
            else:
                self.log.info("listener {name}: certificates reloaded", name=name)


def makeBrokerService(config: Config, reactor: IReactorTime) -> BrokerService:
    """
    Build the broker, its plugins and its listeners from C{config}.

    @param reactor: the reactor the broker keeps time with and the listeners listen on, so it must
        also provide whatever the endpoint strings need (L{IReactorTCP}, L{IReactorSSL}, ...).
    @raise ConfigError: a TLS file of a listener cannot be used, or a plugin named in C{config}
        is unknown, lacks an interface its chain needs, or rejects its options.
    """
    plugins = Plugins(config, reactor)
    listenerAuthenticators = {
        listener.name: plugins.chain(
            listener.auth, IAuthenticator, section=f"listener:{listener.name}", key="auth"
        )
        for listener in config.listeners
        if listener.auth is not None
    }
    # No [store]: the broker keeps an in-memory one of its own, which sessions need not journal to.
    store: IMessageStore | None = (
        None
        if config.storePlugin is None
        else plugins.get(config.storePlugin, IMessageStore, section="store", key="plugin")
    )
    cluster = None
    # With [cluster] workers above one, each process opens the TCP listeners with SO_REUSEPORT.
    shared = False
    sessions = None
    if config.cluster is not None:
        # Imported only when configured: a lone broker loads nothing of Redis.
        from mqttd.cluster.service import Cluster
        from mqttd.cluster.workers import ReusePortEndpoint, nodeName, workerNumber

        worker = workerNumber()
        shared = config.cluster.workers > 1
        cluster = Cluster(
            config.cluster,
            reactor,
            nodeName(config.cluster.node, config.cluster.workers, worker),
        )
        if store is None:
            # Without a [store] of its own a node keeps sessions in the cluster's Redis, where
            # any node can take them over (docs/cluster.md, "Sessions").
            from mqttd.cluster.sessions import ClusterSessions

            sessions = ClusterSessions(cluster)
            store = sessions.store
            # The broker's store for the plugins too: virtual groups live in it, cluster-wide.
            plugins.provide("cluster", store)
    broker = Broker(
        config.broker,
        reactor,
        store,
        router=Router if cluster is None else cluster.buildRouter,
        authenticators=plugins.chain(config.authChain, IAuthenticator, section="auth", key="chain"),
        listenerAuthenticators=listenerAuthenticators,
        authorizers=plugins.chain(config.aclChain, IAuthorizer, section="acl", key="chain"),
        selectors=plugins.chain(
            config.selectorChain, ISubscriberSelector, section="selectors", key="chain"
        ),
        observers=plugins.chain(
            config.observerChain, IBrokerObserver, section="observers", key="chain"
        ),
    )
    broker.logConnections = LogLevel.levelWithName(config.log.level) <= LogLevel.info
    service = BrokerService(broker, IReactorFromThreads(reactor, None))
    if cluster is not None:
        # First child: it starts before the listeners and stops after them.
        cluster.serve(broker, service)
        if sessions is not None:
            sessions.attach(broker)
    for name, plugin in plugins.built.items():
        if IReloadable.providedBy(plugin):
            service.reloadable[name] = plugin
        if IBrokerAware.providedBy(plugin):
            service.brokerAware.append(plugin)
    for listener in config.listeners:
        if listener.protocol == "mqtt-sn":
            if shared:
                raise ConfigError(
                    config.source or "<default>",
                    f"listener:{listener.name}",
                    "protocol",
                    "an MQTT-SN listener cannot be shared by [cluster] workers",
                )
            # Imported only when configured: a broker without MQTT-SN loads none of it.
            from mqttd.sn.delivery import MAX_DATAGRAM
            from mqttd.sn.endpoint import UDPServerEndpoint
            from mqttd.sn.gateway import MQTTSNGateway

            # A datagram protocol, not a factory: the UDP endpoint is the one that knows.
            gateway: Any = MQTTSNGateway(broker, listener, reactor)
            udp: Any = UDPServerEndpoint(IReactorUDP(reactor), listener.endpoint, MAX_DATAGRAM)
            ListenerService(listener, udp, gateway, service._listenerFailed).setServiceParent(
                service
            )
            continue
        if shared:
            try:
                endpoint: IStreamServerEndpoint = ReusePortEndpoint(
                    IReactorSocket(reactor),
                    listener.listenEndpoint(),
                    lean=listener.protocol != "http",
                )
            except ValueError as e:
                raise ConfigError(
                    config.source or "<default>", f"listener:{listener.name}", "endpoint", str(e)
                ) from None
        else:
            endpoint = serverEndpoint(reactor, listener)
        served: IProtocolFactory
        if listener.protocol == "http":
            # Imported only when configured: a broker without one loads nothing of twisted.web.
            from mqttd.http.site import makeHttpSite

            served, _, sampler = makeHttpSite(broker, listener, reactor, plugins.built)
            sampler.setServiceParent(service)
        else:
            served = MQTTServerFactory(broker, listener, reactor)
        # The upgrade gets the CONNECT's budget: both are what a connection must send before
        # it has proved to be a client.
        try:
            factory, tls = listenerFactory(
                served,
                listener,
                reactor,
                config.broker.connect_timeout,
            )
        except TLSFileError as e:
            # The files were read when the config was loaded; one that changed since still
            # stops start-up with the one-line message, not a traceback.
            raise ConfigError(
                config.source or "<default>", f"listener:{listener.name}", e.key, e.why
            ) from None
        if tls is not None:
            service.tls[listener.name] = tls
        ListenerService(listener, endpoint, factory, service._listenerFailed).setServiceParent(
            service
        )
    plugins.checkAllUsed()
    if shared and worker == 1:
        assert config.cluster is not None and config.source is not None
        from mqttd.cluster.workers import workerProcesses

        # Started with the listeners, once this worker has restored its store and joined.
        workerProcesses(
            IReactorProcess(reactor), config.source, config.cluster.workers
        ).setServiceParent(service)
    if config.bridges:
        # Imported only when configured, as most brokers have no bridge.
        from mqttd.bridge.bridge import Bridge, BridgeService

        # Added after the listeners: a MultiService stops its children in reverse order, so a
        # bridge's link closes (cleanly, with DISCONNECT) while the broker still runs.
        for bridgeConfig in config.bridges:
            BridgeService(Bridge(bridgeConfig, broker, reactor)).setServiceParent(service)
    return service
