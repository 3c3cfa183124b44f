"""
The API's messages: the retained ones (listed, shown, deleted through the broker's
C{deleteRetained}) and publishing, one message or a batch, with MQTT 5 properties in their JSON
form (docs/http-api.md), through the broker's C{publish}.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from twisted.web.server import Request

from mqttd.codec.properties import Properties
from mqttd.http.auth import Caller
from mqttd.http.errors import badField, notFound
from mqttd.http.management import Management
from mqttd.http.request import (
    DELETE,
    GET,
    POST,
    Routes,
    boolField,
    jsonBody,
    jsonObject,
    paged,
    qosField,
    query,
    stringField,
)
from mqttd.message import Message, PropertiedMessage
from mqttd.topics import InvalidTopic, validate_topic_filter, validate_topic_name

MAX_BATCH = 1000


class MessagesApi:
    """Retained messages and publishing."""

    def __init__(self, management: Management) -> None:
        self.broker = management.broker

    def routes(self) -> Routes:
        return [
            (GET, "retained", self.listRetained),
            (GET, "retained/{topic*}", self.showRetained),
            (DELETE, "retained/{topic*}", self.deleteRetained),
            (POST, "publish", self.publish),
            (POST, "publish/batch", self.publishBatch),
        ]

    def _retained(self, message: Message) -> dict[str, Any]:
        return {
            "topic": message.topic,
            "qos": message.qos,
            "size": len(message.payload),
            **_payload(message.payload),
        }

    def listRetained(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        topicFilter = query(request, "filter") or "#"
        try:
            validate_topic_filter(topicFilter)
        except InvalidTopic as e:
            raise badField("filter", str(e)) from None
        messages = sorted(self.broker.retained.matching(topicFilter), key=lambda m: m.topic)
        return paged(request, [self._retained(m) for m in messages])

    def showRetained(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        message = self.broker.retained.get(params["topic"])
        if message is None:
            raise notFound(f"retained message on {params['topic']!r}")
        return self._retained(message)

    def deleteRetained(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        if not self.broker.deleteRetained(params["topic"]):
            raise notFound(f"retained message on {params['topic']!r}")
        return 204, None

    def _message(self, body: Any, where: str) -> Message:
        request = jsonObject(body, where.rstrip(".") or "body")
        topic = stringField(request, "topic", where)
        try:
            validate_topic_name(topic, self.broker.config.max_topic_levels)
        except InvalidTopic as e:
            raise badField(where + "topic", str(e)) from None
        text = request.get("payload", "")
        if not isinstance(text, str):
            raise badField(where + "payload", "expected a string")
        encoding = request.get("encoding", "utf-8")
        if encoding == "utf-8":
            payload = text.encode("utf-8")
        elif encoding == "base64":
            try:
                payload = base64.b64decode(text, validate=True)
            except binascii.Error as e:
                raise badField(where + "payload", f"not base64: {e}") from None
        else:
            raise badField(where + "encoding", f"expected utf-8 or base64, got {encoding!r}")
        qos = qosField(request, where=where)
        retain = boolField(request, "retain", where)
        properties = request.get("properties")
        if properties is None:
            return Message(topic, payload, qos, retain)
        return PropertiedMessage(
            topic,
            payload,
            qos,
            retain,
            _properties(properties, where + "properties."),
            self.broker.clock.seconds(),
        )

    def publish(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        message = self._message(jsonBody(request), "")
        self.broker.publish(message)
        return {"topic": message.topic, "qos": message.qos, "retain": message.retain}

    def publishBatch(self, request: Request, caller: Caller, params: dict[str, str]) -> Any:
        body = jsonBody(request)
        if not isinstance(body, list) or not 0 < len(body) <= MAX_BATCH:
            raise badField("body", f"expected a JSON array of 1 to {MAX_BATCH} messages")
        # Every message is checked before any is published: a batch goes whole or not at all.
        messages = [self._message(item, f"[{i}].") for i, item in enumerate(body)]
        for message in messages:
            self.broker.publish(message)
        return {"published": len(messages)}


def _payload(payload: bytes) -> dict[str, Any]:
    try:
        return {"payload": payload.decode("utf-8"), "encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"payload": base64.b64encode(payload).decode("ascii"), "encoding": "base64"}


def _properties(value: Any, where: str) -> Properties:
    """MQTT 5 properties of a published message, from their JSON form (docs/http-api.md)."""
    if not isinstance(value, dict):
        raise badField(where.rstrip("."), "expected a JSON object")
    fields: dict[str, Any] = {}
    for key, item in value.items():
        field = where + key
        if key == "payload_format_indicator":
            if item not in (0, 1) or isinstance(item, bool):
                raise badField(field, "expected 0 or 1")
            fields[key] = item
        elif key == "message_expiry_interval":
            if not isinstance(item, int) or isinstance(item, bool) or not 0 <= item < 1 << 32:
                raise badField(field, "expected seconds, 0 to 4294967295")
            fields[key] = item
        elif key in ("content_type", "response_topic"):
            if not isinstance(item, str):
                raise badField(field, "expected a string")
            if key == "response_topic":
                try:
                    validate_topic_name(item)
                except InvalidTopic as e:
                    raise badField(field, str(e)) from None
            fields[key] = item
        elif key == "correlation_data":
            if not isinstance(item, str):
                raise badField(field, "expected base64 text")
            try:
                fields[key] = base64.b64decode(item, validate=True)
            except binascii.Error as e:
                raise badField(field, f"not base64: {e}") from None
        elif key == "user_properties":
            pairs = list(item.items()) if isinstance(item, dict) else item
            if not isinstance(pairs, list) or not all(
                isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(s, str) for s in p)
                for p in pairs
            ):
                raise badField(field, "expected an object or a list of [name, value] pairs")
            fields[key] = tuple((name, text) for name, text in pairs)
        else:
            known = "payload_format_indicator, message_expiry_interval, content_type,"
            known += " response_topic, correlation_data, user_properties"
            raise badField(field, f"unknown property; expected one of {known}")
    return Properties(**fields)
