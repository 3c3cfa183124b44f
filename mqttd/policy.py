"""
Who may connect and what they may do: the authenticator chain, the authorizer
chain and the cache of its answers.

It asks the plugins and remembers their answers; it never touches a session,
a subscription or a connection.  What to do with a denial is the caller's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from .codec.packets import ConnackCode, Connect
from .config import ListenerConfig
from .interfaces import (
    Action,
    Allow,
    AuthDecision,
    ClientInfo,
    Credentials,
    Deny,
    IAuthenticator,
    IAuthorizer,
    IEnhancedAuthenticator,
)
from .logsummary import RepeatSummary
from .topics import SHARE_PREFIX, split_shared_filter

# Authorisation answers cached per client; past this many the client's cache starts afresh, so a
# client walking through endless topics cannot grow the broker's memory.
DECISION_CACHE_SIZE = 1024

Decision = bool | Deferred[bool]


class Policy:
    """
    The authentication and authorization chains of a broker.

    @ivar authenticators: the chain for listeners without their own.
    @ivar listenerAuthenticators: listener name to that listener's chain.
    @ivar authorizers: the ACL chain; empty means everything is allowed and
        nothing is asked.
    @ivar decisions: the authorizers' answers by client identifier, then by
        action and topic.
    """

    log = Logger()

    def __init__(
        self,
        clients: Mapping[str, ClientInfo],
        repeats: RepeatSummary,
        *,
        authenticators: Sequence[IAuthenticator] = (),
        listenerAuthenticators: Mapping[str, Sequence[IAuthenticator]] | None = None,
        authorizers: Sequence[IAuthorizer] = (),
    ) -> None:
        """
        @param clients: who each session's client is (the broker's table,
            read only), for the lines logging denials.
        @param repeats: where repeated denial lines are summarised.
        """
        self.clients = clients
        self.repeats = repeats
        self.authenticators = tuple(authenticators)
        self.listenerAuthenticators = {
            name: tuple(chain) for name, chain in (listenerAuthenticators or {}).items()
        }
        self.authorizers = tuple(authorizers)
        self.decisions: dict[str, dict[tuple[Action, str], bool]] = {}

    # Authentication

    def authenticate(
        self,
        packet: Connect,
        listener: ListenerConfig,
        address: str,
        certificateName: str | None = None,
    ) -> AuthDecision | Deferred[AuthDecision]:
        """
        Ask the listener's authenticator chain about a CONNECT (see
        L{IAuthenticator} for the chain's rule).

        @param address: the peer's host.
        @param certificateName: the name a verified TLS client certificate
            gave the client, which vouches for it when every authenticator
            abstains.
        @return: L{Allow} or L{Deny}, or a L{Deferred} firing with one.
        """
        chain = self.listenerAuthenticators.get(listener.name, self.authenticators)
        if not chain:
            if listener.allow_anonymous or certificateName is not None:
                return Allow()
            return Deny(ConnackCode.NOT_AUTHORIZED, "anonymous clients are refused")
        credentials = self.credentials(packet, listener, address, certificateName)
        return self._authenticateFrom(chain, 0, credentials, listener)

    def credentials(
        self,
        packet: Connect,
        listener: ListenerConfig,
        address: str,
        certificateName: str | None = None,
    ) -> Credentials:
        """What a CONNECT presents to the authenticators (see L{authenticate})."""
        return Credentials(
            clientId=packet.client_id,
            username=packet.username,
            password=packet.password,
            peerCertificateName=certificateName,
            address=address,
            listener=listener.name,
        )

    def enhancedAuthenticator(
        self, listener: ListenerConfig, method: str
    ) -> IEnhancedAuthenticator | None:
        """
        The first of the listener's authenticators offering the MQTT 5.0
        Authentication Method C{method}, or L{None}.
        """
        for authenticator in self.listenerAuthenticators.get(listener.name, self.authenticators):
            if (
                IEnhancedAuthenticator.providedBy(authenticator)
                and authenticator.authenticationMethod == method
            ):
                return authenticator
        return None

    def _authenticateFrom(
        self,
        chain: Sequence[IAuthenticator],
        start: int,
        credentials: Credentials,
        listener: ListenerConfig,
    ) -> AuthDecision | Deferred[AuthDecision]:
        for index in range(start, len(chain)):
            try:
                result = chain[index].authenticate(credentials)
            except Exception:
                self.log.failure("authenticator {index} failed; refusing", index=index)
                return Deny(ConnackCode.NOT_AUTHORIZED, "authenticator failed")
            if isinstance(result, Deferred):
                return result.addCallbacks(
                    self._authenticatorAnswered,
                    self._authenticatorFailed,
                    callbackArgs=(chain, index, credentials, listener),
                    errbackArgs=(index,),
                )
            if result is not None:
                return result
        if credentials.peerCertificateName is not None or (
            listener.allow_anonymous and credentials.username is None
        ):
            return Allow()
        return Deny(ConnackCode.NOT_AUTHORIZED, "no authenticator accepted the client")

    def _authenticatorAnswered(
        self,
        result: AuthDecision,
        chain: Sequence[IAuthenticator],
        index: int,
        credentials: Credentials,
        listener: ListenerConfig,
    ) -> AuthDecision | Deferred[AuthDecision]:
        if result is not None:
            return result
        return self._authenticateFrom(chain, index + 1, credentials, listener)

    def _authenticatorFailed(self, failure: Any, index: int) -> Deny:
        self.log.failure("authenticator {index} failed; refusing", failure, index=index)
        return Deny(ConnackCode.NOT_AUTHORIZED, "authenticator failed")

    # Authorisation

    def decide(self, client: ClientInfo, action: Action, topic: str) -> Decision:
        """
        The authorizer chain's answer for C{client}, from the cache when it
        has one; a Deferred only when an authorizer answered with one.
        """
        cache = self.decisions.get(client.clientId)
        if cache is None:
            cache = self.decisions[client.clientId] = {}
        cached = cache.get((action, topic))
        if cached is not None:
            return cached
        return self._decideFrom(0, client, action, topic, cache)

    def _decideFrom(
        self,
        start: int,
        client: ClientInfo,
        action: Action,
        topic: str,
        cache: dict[tuple[Action, str], bool],
    ) -> Decision:
        authorizers = self.authorizers
        for index in range(start, len(authorizers)):
            try:
                answer = authorizers[index].authorize(client, action, topic)
            except Exception:
                self.log.failure("authorizer {index} failed; denying", index=index)
                return False
            if isinstance(answer, Deferred):
                return answer.addCallbacks(
                    self._authorizerAnswered,
                    self._authorizerFailed,
                    callbackArgs=(index, client, action, topic, cache),
                    errbackArgs=(index,),
                )
            if answer is not None:
                return _remember(cache, action, topic, bool(answer))
        return _remember(cache, action, topic, False)

    def _authorizerAnswered(
        self,
        answer: bool | None,
        index: int,
        client: ClientInfo,
        action: Action,
        topic: str,
        cache: dict[tuple[Action, str], bool],
    ) -> Decision:
        if answer is not None:
            return _remember(cache, action, topic, bool(answer))
        return self._decideFrom(index + 1, client, action, topic, cache)

    def _authorizerFailed(self, failure: Failure, index: int) -> bool:
        # Not cached: the next attempt may find the authorizer's backend up again.
        self.log.failure("authorizer {index} failed; denying", failure, index=index)
        return False

    def logDenied(self, clientId: str, action: str, topic: str) -> None:
        """Log that the ACL denied C{clientId} to C{action} C{topic}."""
        # Summarised per client: one that keeps publishing where it may not (or a fan-out the
        # receive ACL stops) writes a line a minute, not one per message.
        client = self.clients.get(clientId)
        self.repeats.emit(
            LogLevel.warn,
            clientId,
            "ACL denials",
            "ACL denied {clientId} (user {username!r}, {address}) {action} {topic!r}",
            clientId=clientId,
            username=None if client is None else client.username,
            address="offline" if client is None else client.address,
            action=action,
            topic=topic,
        )

    def authorize(self, client: ClientInfo, action: Action, topic: str) -> Decision:
        """
        The ACL chain's answer for C{client} (C{True} when no authorizer is configured), cached
        as every answer is: for a gateway that checks messages arriving outside a session
        (MQTT-SN's QoS -1).
        """
        if not self.authorizers:
            return True
        return self.decide(client, action, topic)

    def forget(self, clientId: str) -> None:
        """Drop the answers cached for C{clientId}: it reconnected, or its session ended."""
        self.decisions.pop(clientId, None)

    def changed(self) -> None:
        """
        The authorizers' rules changed (a reload): forget every cached
        answer.  Subscriptions already granted stay until their session
        resumes, but each delivery is checked against the new rules.
        """
        self.decisions.clear()


def aclFilter(topicFilter: str) -> str:
    """
    The filter the ACL is asked about for a subscription to C{topicFilter}.
    """
    # A shared subscription reads what its filter after the share name matches, so the ACL is
    # asked about that filter: rules written for topics then cover shared subscriptions too.
    if topicFilter.startswith(SHARE_PREFIX):
        return split_shared_filter(topicFilter)[1]
    return topicFilter


def _remember(
    cache: dict[tuple[Action, str], bool], action: Action, topic: str, allowed: bool
) -> bool:
    if len(cache) >= DECISION_CACHE_SIZE:
        cache.clear()
    cache[(action, topic)] = allowed
    return allowed
