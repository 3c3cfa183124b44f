"""
The API's clients, sessions and subscriptions: listing and showing them, disconnecting a client,
ending a session, subscribing and unsubscribing a client (through the broker's C{kick},
C{endSession}, C{subscribeFor} and C{unsubscribeFor}).
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web.server import Request

from mqttd.http.auth import Caller
from mqttd.http.errors import badField, notFound
from mqttd.http.management import Management
from mqttd.http.request import (
    DELETE,
    GET,
    POST,
    Routes,
    objectBody,
    paged,
    qosField,
    query,
    stringField,
)
from mqttd.topics import InvalidTopic


class ClientsApi:
    """Who is connected, which sessions are kept, what they subscribe to."""

    log = Logger()

    def __init__(self, management: Management) -> None:
        self.broker = management.broker

    def routes(self) -> Routes:
        return [
            (GET, "clients", self.listClients),
            (GET, "clients/{clientid}", self.showClient),
            (DELETE, "clients/{clientid}", self.kickClient),
            (GET, "clients/{clientid}/subscriptions", self.clientSubscriptions),
            (POST, "clients/{clientid}/subscriptions", self.subscribeClient),
            (DELETE, "clients/{clientid}/subscriptions/{filter*}", self.unsubscribeClient),
            (GET, "sessions", self.listSessions),
            (DELETE, "sessions/{clientid}", self.deleteSession),
            (GET, "subscriptions", self.listSubscriptions),
        ]

    def _describe(self, clientId: str) -> dict[str, Any]:
        broker = self.broker
        session = broker.sessions[clientId]
        client = broker.clients.get(clientId)
        conn = session.connection
        return {
            "clientid": clientId,
            "username": client.username if client is not None else None,
            "address": client.address if client is not None else None,
            "listener": client.listener if client is not None else None,
            "connected": conn is not None,
            "protocol": conn.protocolLevel if conn is not None else None,
            "clean_session": session.cleanSession,
            "expiry_interval": session.expiryInterval,
            "subscriptions": len(session.subscriptions),
            "inflight": len(session.inflight),
            "queued": len(session.pending) if session.pending is not None else 0,
            "dropped": session.dropped,
        }

    def _session(self, clientId: str) -> Any:
        session = self.broker.sessions.get(clientId)
        if session is None:
            raise notFound(f"client {clientId!r}")
        return session

    def _selected(self, request: Request, connected: bool) -> list[dict[str, Any]]:
        like = query(request, "clientid")
        username = query(request, "username")
        address = query(request, "address")
        broker = self.broker
        chosen = []
        for clientId in sorted(broker.sessions):
            if (broker.sessions[clientId].connection is not None) != connected:
                continue
            if like is not None and like not in clientId:
                continue
            client = broker.clients.get(clientId)
            if username is not None and (client is None or client.username != username):
                continue
            if address is not None and (client is None or address not in client.address):
                continue
            chosen.append(self._describe(clientId))
        return chosen

    def listClients(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        return paged(request, self._selected(request, connected=True))

    def showClient(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        self._session(params["clientid"])
        return self._describe(params["clientid"])

    def kickClient(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        clientId = params["clientid"]
        if not self.broker.kick(clientId):
            raise notFound(f"connected client {clientId!r}")
        self.log.info("{caller} disconnected {clientId}", caller=caller.name, clientId=clientId)
        return 204, None

    def listSessions(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        return paged(request, self._selected(request, connected=False))

    def deleteSession(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        clientId = params["clientid"]
        if not self.broker.endSession(clientId):
            raise notFound(f"session {clientId!r}")
        self.log.info("{caller} ended {clientId}'s session", caller=caller.name, clientId=clientId)
        return 204, None

    # Subscriptions

    def clientSubscriptions(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        session = self._session(params["clientid"])
        return {
            "data": [
                {"topic": f, "qos": options & 3}
                for f, options in sorted(session.subscriptions.items())
            ]
        }

    def subscribeClient(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        body = objectBody(request)
        topicFilter = stringField(body, "topic")
        qos = qosField(body)
        try:
            known = self.broker.subscribeFor(params["clientid"], topicFilter, qos)
        except InvalidTopic as e:
            raise badField("topic", str(e)) from None
        if not known:
            raise notFound(f"client {params['clientid']!r}")
        return 201, {"clientid": params["clientid"], "topic": topicFilter, "qos": qos}

    def unsubscribeClient(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        self._session(params["clientid"])
        if not self.broker.unsubscribeFor(params["clientid"], params["filter"]):
            raise notFound(f"subscription {params['filter']!r} of {params['clientid']!r}")
        return 204, None

    def listSubscriptions(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        like = query(request, "clientid")
        topic = query(request, "topic")
        found = []
        for clientId, session in sorted(self.broker.sessions.items()):
            if like is not None and like not in clientId:
                continue
            for topicFilter, options in sorted(session.subscriptions.items()):
                if topic is None or topic == topicFilter:
                    found.append({"clientid": clientId, "topic": topicFilter, "qos": options & 3})
        return paged(request, found)
