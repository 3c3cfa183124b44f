"""
The REST API over real HTTP against a running broker with real paho-mqtt clients: what the API
does is checked where it shows, on the MQTT side.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mqttd import cli
from mqttd.http.apikeys import ApiKeys, digestOf
from mqttd.interfaces import PluginContext
from mqttd.plugin_loader import findPlugins
from tests import e2e
from tests.httpapi import HttpBroker, detachGroups, startHttpBroker

DOCS = Path(__file__).resolve().parent.parent / "docs" / "http-api.md"


@pytest.fixture
def http(twisted_reactor: None, tmp_path: Path) -> Iterator[HttpBroker]:
    e2e.REACTOR.takeErrors()
    running = startHttpBroker(tmp_path)
    yield running
    detachGroups(running)()
    running.stop()
    errors = e2e.REACTOR.takeErrors()
    assert not errors, "errors logged in the reactor:\n" + "\n".join(errors)


def _client(http: HttpBroker, clientId: str, **kwargs: object) -> e2e.Client:
    return e2e.Client(http.broker.port, clientId, **kwargs)  # type: ignore[arg-type]


def _login(user: str, password: str) -> object:
    return lambda c: c.username_pw_set(user, password)


def _cookie(http: HttpBroker, user: str, password: str) -> tuple[str, str]:
    """Log in as the dashboard does; the cookie header to send and the CSRF token."""
    answer = http.request(
        "POST", "/api/v1/login", {"username": user, "password": password}, token=None
    )
    assert answer.status == 200, answer.body
    setCookie = answer.headers["Set-Cookie"]
    return setCookie.split(";")[0], answer.json()["csrf"]


# The documentation's curl lines


def _curlLines() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", DOCS.read_text(), re.S)
    return [b.strip() for b in blocks if b.strip().startswith("curl")]


def test_docCurlLines(http: HttpBroker, tmp_path: Path) -> None:
    """
    Every curl line of docs/http-api.md, run in order by bash against a broker with the
    clients, session, retained message and admin user the examples speak of, succeeds (curl -f
    fails on an error status), and each left the state it promised.
    """
    http.request("POST", "/api/v1/users", {"username": "admin", "password": "s3cret"})
    logger = _client(http, "logger", clean=False)
    logger.subscribe("sensors/#", 1)
    logger.disconnect()
    sensor = _client(http, "sensor-1")
    sensor.subscribe("sensors/1/#", 1)
    http.broker.inject("sensors/1/temp", b"21.5", qos=1, retain=True)
    lines = _curlLines()
    assert len(lines) >= 30
    environment = {**os.environ, "MQTTD": http.url, "TOKEN": http.token}
    for line in lines:
        result = subprocess.run(
            ["bash", "-c", "set -o pipefail; " + line],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, f"{line}\n{result.stdout}{result.stderr}"
    # Published on the device's behalf (the subscription added, then removed after the publish
    # in the document, so only the publish's delivery shows), and the device kicked at the end.
    topics = {m.topic for m in sensor.wait_for(2)}
    assert "sensors/1/config" in topics
    assert sensor.disconnected.wait(e2e.TIMEOUT)
    assert not http.broker.is_connected("sensor-1")
    assert http.broker.call(lambda: "logger" in http.broker.broker.sessions) is False
    assert http.broker.call(lambda: http.broker.broker.retained.get("sensors/1/temp")) is None
    assert http.request("GET", "/api/v1/groups/friends").status == 404
    assert "dave" not in http.passwd.read_text()
    sensor.close()


# What the API does, seen by MQTT clients


def test_kickDisconnects(http: HttpBroker) -> None:
    """DELETE /api/v1/clients/{id} really disconnects a paho client, and a second is a 404."""
    victim = _client(http, "victim")
    bystander = _client(http, "bystander")
    assert http.request("DELETE", "/api/v1/clients/victim").status == 204
    assert victim.disconnected.wait(e2e.TIMEOUT)
    http.broker.wait_gone("victim")
    assert http.broker.is_connected("bystander")
    missing = http.request("DELETE", "/api/v1/clients/victim")
    assert missing.status == 404 and missing.json()["code"] == "NOT_FOUND"
    victim.close()
    bystander.close()


def test_kickPublishesWill(http: HttpBroker) -> None:
    """A kicked client's connection counts as lost: its will is published [MQTT-3.1.2-8]."""
    watcher = _client(http, "watcher")
    watcher.subscribe("wills/#", 1)
    victim = _client(http, "victim", will=e2e.WillSpec("wills/victim", b"gone", 1))
    assert http.request("DELETE", "/api/v1/clients/victim").status == 204
    (will,) = watcher.wait_for(1)
    assert (will.topic, will.payload) == ("wills/victim", b"gone")
    victim.close()
    watcher.close()


def test_kickTellsMqtt5ClientWhy(http: HttpBroker) -> None:
    """A 5.0 client is sent DISCONNECT with reason 0x98, Administrative action."""
    victim = _client(http, "victim5", protocol=e2e.MQTTv5)
    assert http.request("DELETE", "/api/v1/clients/victim5").status == 204
    assert victim.disconnected.wait(e2e.TIMEOUT)
    assert victim.disconnect_reason == 0x98
    victim.close()


@pytest.mark.parametrize(("published", "subscribed", "expected"), [(1, 2, 1), (2, 1, 1), (2, 2, 2)])
def test_publishReachesSubscriberAtQoS(
    http: HttpBroker, published: int, subscribed: int, expected: int
) -> None:
    """
    POST /api/v1/publish reaches a subscriber at the lower of the published and granted QoS
    [MQTT-3.3.5-1], with the payload as sent.
    """
    subscriber = _client(http, "subscriber")
    subscriber.subscribe("api/#", subscribed)
    answer = http.request(
        "POST", "/api/v1/publish", {"topic": "api/x", "payload": "héllo", "qos": published}
    )
    assert answer.status == 200, answer.body
    (got,) = subscriber.wait_for(1)
    assert (got.topic, got.payload, got.qos) == ("api/x", "héllo".encode(), expected)
    subscriber.close()


def test_publishBase64RetainedAndProperties(http: HttpBroker) -> None:
    """
    A base64 payload arrives as its bytes; retain keeps it for later subscribers; MQTT 5
    properties reach a 5.0 subscriber.
    """
    subscriber = _client(http, "sub5", protocol=e2e.MQTTv5)
    subscriber.subscribe("bin/#", 1)
    received: list[Any] = []
    subscriber.paho.on_message = lambda c, u, m: received.append(m)
    answer = http.request(
        "POST",
        "/api/v1/publish",
        {
            "topic": "bin/x",
            "payload": "AP8=",
            "encoding": "base64",
            "qos": 1,
            "retain": True,
            "properties": {
                "content_type": "application/octet-stream",
                "user_properties": [["k", "v"]],
            },
        },
    )
    assert answer.status == 200, answer.body
    e2e.wait_until(lambda: bool(received), "the message")
    assert received[0].payload == b"\x00\xff"
    assert received[0].properties.ContentType == "application/octet-stream"
    assert received[0].properties.UserProperty == [("k", "v")]
    later = _client(http, "later")
    later.subscribe("bin/#", 1)
    (kept,) = later.wait_for(1)
    assert (kept.payload, kept.retain) == (b"\x00\xff", True)
    listed = http.request("GET", "/api/v1/retained?filter=bin/%23").json()
    assert listed["data"] == [
        {"topic": "bin/x", "qos": 1, "size": 2, "payload": "AP8=", "encoding": "base64"}
    ]
    subscriber.close()
    later.close()


def test_publishBatchAllOrNothing(http: HttpBroker) -> None:
    """A batch with one bad message is a 400 naming it, and none of the batch is published."""
    subscriber = _client(http, "subscriber")
    subscriber.subscribe("batch/#", 0)
    bad = http.request(
        "POST", "/api/v1/publish/batch", [{"topic": "batch/1"}, {"topic": "batch/2", "qos": 3}]
    )
    assert bad.status == 400
    assert bad.json()["field"] == "[1].qos"
    good = http.request(
        "POST",
        "/api/v1/publish/batch",
        [{"topic": "batch/1", "payload": "a"}, {"topic": "batch/2", "payload": "b"}],
    )
    assert good.json() == {"published": 2}
    got = subscriber.wait_for(2)
    assert [m.payload for m in got] == [b"a", b"b"]
    subscriber.close()


def test_subscribeOnBehalf(http: HttpBroker) -> None:
    """
    POST .../subscriptions subscribes a connected device server-side: it gets the retained
    message the filter matches at once [MQTT-3.3.1-8], then new messages; DELETE stops them.
    """
    http.broker.inject("commands/dev/boot", b"retained", qos=1, retain=True)
    device = _client(http, "dev")
    answer = http.request(
        "POST", "/api/v1/clients/dev/subscriptions", {"topic": "commands/dev/#", "qos": 1}
    )
    assert answer.status == 201, answer.body
    (retained,) = device.wait_for(1)
    assert (retained.payload, retained.retain, retained.qos) == (b"retained", True, 1)
    listed = http.request("GET", "/api/v1/clients/dev/subscriptions").json()
    assert listed["data"] == [{"topic": "commands/dev/#", "qos": 1}]
    http.request(
        "POST", "/api/v1/publish", {"topic": "commands/dev/led", "payload": "on", "qos": 1}
    )
    (command,) = device.wait_for(1)
    assert (command.topic, command.payload, command.qos) == ("commands/dev/led", b"on", 1)
    gone = http.request("DELETE", "/api/v1/clients/dev/subscriptions/commands%2Fdev%2F%23")
    assert gone.status == 204
    http.request("POST", "/api/v1/publish", {"topic": "commands/dev/led", "payload": "off"})
    probe = _client(http, "probe")
    probe.subscribe("commands/#", 0)
    http.request("POST", "/api/v1/publish", {"topic": "commands/dev/x", "payload": "end"})
    probe.wait_for(2)  # the retained message and "end": everything before it was routed
    assert device.pending() == []
    bad = http.request("POST", "/api/v1/clients/dev/subscriptions", {"topic": "a/#/b"})
    assert bad.status == 400 and bad.json()["field"] == "topic"
    device.close()
    probe.close()


def test_subscriptionOnBehalfSurvivesInPersistentSession(http: HttpBroker) -> None:
    """A server-side subscription of an offline persistent session queues messages for it."""
    device = _client(http, "dev", clean=False)
    device.disconnect()
    http.broker.wait_gone("dev")
    assert (
        http.request(
            "POST", "/api/v1/clients/dev/subscriptions", {"topic": "queued/#", "qos": 1}
        ).status
        == 201
    )
    http.request("POST", "/api/v1/publish", {"topic": "queued/1", "payload": "kept", "qos": 1})
    back = _client(http, "dev", clean=False)
    (got,) = back.wait_for(1)
    assert (got.topic, got.payload) == ("queued/1", b"kept")
    back.close()


def test_clientsListFiltersAndPages(http: HttpBroker) -> None:
    """Clients are listed sorted, filtered by client id part and user name, and paged."""
    http.request("POST", "/api/v1/users", {"username": "ann", "password": "pw"})
    made = [_client(http, f"room-{i}") for i in range(3)]
    made.append(_client(http, "other", setup=_login("ann", "pw")))
    page = http.request("GET", "/api/v1/clients?clientid=room&limit=2&page=2").json()
    assert [c["clientid"] for c in page["data"]] == ["room-2"]
    assert page["meta"] == {"page": 2, "limit": 2, "count": 3}
    byUser = http.request("GET", "/api/v1/clients?username=ann").json()
    assert [c["clientid"] for c in byUser["data"]] == ["other"]
    one = http.request("GET", "/api/v1/clients/other").json()
    assert one["username"] == "ann" and one["connected"] is True and one["protocol"] == 4
    byAddress = http.request("GET", "/api/v1/clients?address=10.9.9.9").json()
    assert byAddress["data"] == []
    assert http.request("GET", "/api/v1/clients?limit=0").json()["field"] == "limit"
    for c in made:
        c.close()


def test_sessionsListAndDelete(http: HttpBroker) -> None:
    """An offline persistent session is listed under sessions, not clients, and can be ended."""
    away = _client(http, "away", clean=False)
    away.subscribe("x/#", 1)
    away.disconnect()
    http.broker.wait_gone("away")
    sessions = http.request("GET", "/api/v1/sessions").json()
    assert [s["clientid"] for s in sessions["data"]] == ["away"]
    assert sessions["data"][0]["subscriptions"] == 1
    assert http.request("GET", "/api/v1/clients").json()["data"] == []
    assert http.request("DELETE", "/api/v1/sessions/away").status == 204
    back = _client(http, "away", clean=False)
    assert back.session_present is False
    back.close()


def test_retainedGetAndDelete(http: HttpBroker) -> None:
    """A retained message deleted by the API is not sent to a new subscriber [MQTT-3.3.1-10]."""
    http.broker.inject("r/1", b"one", qos=0, retain=True)
    http.broker.inject("r/2", b"two", qos=0, retain=True)
    assert http.request("GET", "/api/v1/retained/r/1").json()["payload"] == "one"
    assert http.request("DELETE", "/api/v1/retained/r/1").status == 204
    assert http.request("GET", "/api/v1/retained/r/1").status == 404
    subscriber = _client(http, "s")
    subscriber.subscribe("r/#", 0)
    (only,) = subscriber.wait_for(1)
    assert only.topic == "r/2"
    subscriber.close()


def test_userCreatedByApiLogsInAtOnce(http: HttpBroker) -> None:
    """
    A user created by the API connects at once with its password; a changed password replaces
    the old one; a deleted user is refused.
    """
    created = http.request("POST", "/api/v1/users", {"username": "eve", "password": "one"})
    assert created.status == 201
    assert http.request("POST", "/api/v1/users", {"username": "eve", "password": "x"}).status == 409
    _client(http, "eve-1", setup=_login("eve", "one")).close()
    assert http.request("PUT", "/api/v1/users/eve", {"password": "two"}).status == 200
    with pytest.raises(AssertionError, match="return code"):
        _client(http, "eve-2", setup=_login("eve", "one"))
    _client(http, "eve-3", setup=_login("eve", "two")).close()
    assert http.request("DELETE", "/api/v1/users/eve").status == 204
    with pytest.raises(AssertionError, match="return code"):
        _client(http, "eve-4", setup=_login("eve", "two"))
    assert "eve" not in http.passwd.read_text()


def test_groupMemberAddedReceivesNextGroupMessage(http: HttpBroker) -> None:
    """
    A member added to a group by the API receives the next message published to the group; a
    member removed no longer does.
    """
    created = http.request("POST", "/api/v1/groups", {"name": "team", "members": ["a"]})
    assert created.status == 201, created.body
    a = _client(http, "a")
    b = _client(http, "b")
    added = http.request("POST", "/api/v1/groups/team/members", {"members": {"b": 1}})
    assert added.json()["members"] == {"a": 2, "b": 1}
    publisher = _client(http, "publisher")
    publisher.publish("$group/team/hello", b"hi", 1)
    assert b.wait_for(1)[0].payload == b"hi"
    assert a.wait_for(1)[0].payload == b"hi"
    assert http.request("DELETE", "/api/v1/groups/team/members/a").status == 200
    publisher.publish("$group/team/hello", b"again", 1)
    assert b.wait_for(1)[0].payload == b"again"
    assert a.pending() == []
    assert http.request("GET", "/api/v1/groups").json()["data"][0]["members"] == {"b": 1}
    assert http.request("POST", "/api/v1/groups", {"name": "team"}).status == 409
    bad = http.request("POST", "/api/v1/groups", {"name": "x/y"})
    assert bad.status == 400 and bad.json()["field"] == "name"
    for c in (a, b, publisher):
        c.close()


# Authorization


def test_noKeyWrongKeyViewerKey(http: HttpBroker) -> None:
    """
    Without a key: 401 with WWW-Authenticate; an unknown key: 401; a viewer key reads but may
    not change anything (403), and an admin key may.
    """
    missing = http.request("GET", "/api/v1/status", token=None)
    assert missing.status == 401
    assert missing.json()["code"] == "UNAUTHORIZED"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = http.request("GET", "/api/v1/status", token="mqttd_not-a-key")
    assert wrong.status == 401
    notBearer = http.request(
        "GET", "/api/v1/status", token=None, headers={"Authorization": f"Basic {http.token}"}
    )
    assert notBearer.status == 401
    assert http.request("GET", "/api/v1/status", token=http.viewerToken).status == 200
    refused = http.request("POST", "/api/v1/publish", {"topic": "a"}, token=http.viewerToken)
    assert refused.status == 403 and refused.json()["code"] == "FORBIDDEN"
    assert http.request("POST", "/api/v1/publish", {"topic": "a"}).status == 200


def test_keyAddedByCommandWorksWithoutRestart(
    http: HttpBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    mqttd apikey add prints a token the file does not hold (only its SHA-256), which the
    running listener accepts at the next request; delete revokes it.
    """
    keyFile = str(http.passwd.parent / "apikeys")
    assert cli.main(["apikey", "--file", keyFile, "add", "ci"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("mqttd_")
    text = Path(keyFile).read_text()
    assert token not in text and f"ci:admin:{digestOf(token)}" in text
    assert http.request("GET", "/api/v1/whoami", token=token).json() == {
        "name": "ci",
        "role": "admin",
    }
    assert cli.main(["apikey", "--file", keyFile, "delete", "ci"]) == 0
    assert http.request("GET", "/api/v1/whoami", token=token).status == 401
    assert cli.main(["apikey", "--file", keyFile, "list"]) == 0
    assert capsys.readouterr().out.split("\n")[:2] == ["ops admin", "grafana viewer"]


def test_dashboardLoginAdminOnly(http: HttpBroker) -> None:
    """
    Only a user named in admins may log in: a valid non-admin user gets 403, a wrong password
    401; the admin gets an HttpOnly SameSite=Strict session cookie that authenticates reads.
    """
    http.request("POST", "/api/v1/users", {"username": "admin", "password": "s3cret"})
    http.request("POST", "/api/v1/users", {"username": "mallory", "password": "pw"})
    nonAdmin = http.request(
        "POST", "/api/v1/login", {"username": "mallory", "password": "pw"}, token=None
    )
    assert nonAdmin.status == 403 and "Set-Cookie" not in nonAdmin.headers
    wrong = http.request(
        "POST", "/api/v1/login", {"username": "admin", "password": "nope"}, token=None
    )
    assert wrong.status == 401
    answer = http.request(
        "POST", "/api/v1/login", {"username": "admin", "password": "s3cret"}, token=None
    )
    setCookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in setCookie and "SameSite=strict" in setCookie and "Path=/" in setCookie
    cookie = setCookie.split(";")[0]
    whoami = http.request("GET", "/api/v1/whoami", token=None, headers={"Cookie": cookie})
    assert whoami.json()["name"] == "admin"
    http.request(
        "POST",
        "/api/v1/logout",
        token=None,
        headers={"Cookie": cookie, "X-CSRF-Token": answer.json()["csrf"]},
    )
    ended = http.request("GET", "/api/v1/whoami", token=None, headers={"Cookie": cookie})
    assert ended.status == 401


def test_csrfAttemptRefused(http: HttpBroker) -> None:
    """
    A change carried by the session cookie alone (as a forged cross-site request would be) is
    refused, as is one with the token from another origin, or sent as a form; with the token,
    from the dashboard's origin, it is done.
    """
    http.request("POST", "/api/v1/users", {"username": "admin", "password": "s3cret"})
    cookie, csrf = _cookie(http, "admin", "s3cret")
    body = {"topic": "csrf/x", "payload": "p"}
    forged = http.request("POST", "/api/v1/publish", body, token=None, headers={"Cookie": cookie})
    assert forged.status == 403 and forged.json()["code"] == "CSRF"
    wrongToken = http.request(
        "POST",
        "/api/v1/publish",
        body,
        token=None,
        headers={"Cookie": cookie, "X-CSRF-Token": csrf[:-1] + "x"},
    )
    assert wrongToken.status == 403
    elsewhere = http.request(
        "POST",
        "/api/v1/publish",
        body,
        token=None,
        headers={"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": "http://evil.example"},
    )
    assert elsewhere.status == 403
    form = http.request(
        "POST",
        "/api/v1/publish",
        token=None,
        raw=b"topic=csrf/x",
        headers={
            "Cookie": cookie,
            "X-CSRF-Token": csrf,
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert form.status == 415
    subscriber = _client(http, "s")
    subscriber.subscribe("csrf/#")
    done = http.request(
        "POST",
        "/api/v1/publish",
        body,
        token=None,
        headers={"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": http.url},
    )
    assert done.status == 200
    assert [m.payload for m in subscriber.wait_for(1)] == [b"p"]
    subscriber.close()


def test_failedLoginsRateLimited(http: HttpBroker) -> None:
    """
    After 5 failed logins from one address, even the right password is answered 429 with
    Retry-After, so passwords cannot be guessed at speed.
    """
    http.request("POST", "/api/v1/users", {"username": "admin", "password": "s3cret"})
    for _ in range(5):
        assert (
            http.request(
                "POST", "/api/v1/login", {"username": "admin", "password": "x"}, token=None
            ).status
            == 401
        )
    limited = http.request(
        "POST", "/api/v1/login", {"username": "admin", "password": "s3cret"}, token=None
    )
    assert limited.status == 429
    assert int(limited.headers["Retry-After"]) > 0


# Bad input


def test_badInputNamesTheField(http: HttpBroker) -> None:
    """Each kind of bad request gets its status and a JSON error naming what is wrong."""
    cases = [
        ("POST", "/api/v1/publish", {"topic": "a", "qos": 3}, 400, "qos"),
        ("POST", "/api/v1/publish", {"payload": "x"}, 400, "topic"),
        (
            "POST",
            "/api/v1/publish",
            {"topic": "a", "payload": "!", "encoding": "base64"},
            400,
            "payload",
        ),
        (
            "POST",
            "/api/v1/publish",
            {"topic": "a", "properties": {"bogus": 1}},
            400,
            "properties.bogus",
        ),
        ("POST", "/api/v1/publish", ["not", "an", "object"], 400, "body"),
        ("POST", "/api/v1/users", {"username": "a:b", "password": "x"}, 400, "username"),
        ("GET", "/api/v1/retained?filter=a/%23/b", None, 400, "filter"),
    ]
    for method, path, body, status, field in cases:
        answer = http.request(method, path, body)
        assert (answer.status, answer.json().get("field")) == (status, field), (path, body)
        assert answer.json()["code"] == "BAD_REQUEST"
    notJson = http.request(
        "POST", "/api/v1/publish", raw=b"{", headers={"Content-Type": "application/json"}
    )
    assert notJson.status == 400 and notJson.json()["field"] == "body"
    assert http.request("GET", "/api/v1/nothing").status == 404
    assert http.request("GET", "/api/v2/status").status == 404
    wrongMethod = http.request("PUT", "/api/v1/status", {})
    assert wrongMethod.status == 405 and wrongMethod.headers["Allow"] == "GET"


def test_statusAndSysCountMessages(http: HttpBroker) -> None:
    """Status, stats and $SYS count what happened: a connection and a published message."""
    c = _client(http, "counted")
    c.subscribe("n", 0)
    http.request("POST", "/api/v1/publish", {"topic": "n", "payload": "1"})
    c.wait_for(1)
    stats = http.request("GET", "/api/v1/stats").json()
    assert stats["connections"] == 1 and stats["subscriptions"] == 1
    assert (stats["messages_received"], stats["messages_sent"]) == (1, 1)
    assert stats["dropped"]["queue_full"] == 0
    assert stats["memory_rss"] > 0
    sysTree = http.broker.broker.sysTree
    assert sysTree is not None
    http.broker.call(sysTree.update)
    sys_ = http.request("GET", "/api/v1/sys").json()
    assert sys_["$SYS/broker/clients/connected"] == "1"
    assert sys_["$SYS/broker/publish/messages/received"] == "1"
    assert sys_["$SYS/broker/version"].startswith("mqttd")
    http.broker.call(http.management.sample)
    history = http.request("GET", "/api/v1/stats/history").json()
    assert history["samples"][-1]["messages_received"] == 1
    assert history["samples"][-1]["messages_sent"] == 1
    assert history["samples"][-1]["connections"] == 1
    c.close()


def test_apikeyCommandFindsTheListener(tmp_path: Path) -> None:
    """
    mqttd apikey --config finds the api_keys file of the configuration's HTTP listener,
    relative to the file, and the listener's other keys are refused on MQTT listeners.
    """
    ini = tmp_path / "mqttd.ini"
    ini.write_text(
        "[listener:http]\nendpoint = tcp:0\nprotocol = http\napi_keys = keys\nadmins = root\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mqttd",
            "apikey",
            "--config",
            str(ini),
            "add",
            "--role",
            "viewer",
            "board",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert ApiKeys(str(tmp_path / "keys")).check(result.stdout.strip()) is not None
    ini.write_text("[listener:m]\nendpoint = tcp:0\napi_keys = keys\n")
    result = subprocess.run(
        [sys.executable, "-m", "mqttd", "apikey", "--config", str(ini), "list"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "[listener:m] api_keys: only used with protocol = http" in result.stderr


def test_managementMessageRoutedAsBrokersOwn(http: HttpBroker) -> None:
    """An API publish is counted as received and routed, with no publisher (no No Local)."""
    before = http.broker.call(lambda: http.broker.broker.stats.messagesRouted)
    http.request("POST", "/api/v1/publish", {"topic": "count", "payload": "x"})
    after = http.broker.call(lambda: http.broker.broker.stats.messagesRouted)
    assert after == before + 1


@pytest.mark.parametrize("chunked", [False, True])
def test_oversizedBodyRefusedBeforeRead(http: HttpBroker, chunked: bool) -> None:
    """
    A body announced (or, chunked, found) larger than 1 MiB is answered 413 and the connection
    closed, without a key and before the body is sent: nothing makes the broker buffer it.
    """
    with socket.create_connection((e2e.HOST, http.port), timeout=e2e.TIMEOUT) as s:
        if chunked:
            s.sendall(
                b"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: application/json\r\n\r\n"
            )
            # Just past the limit, and no more: the broker has read all that was sent when it
            # answers, so its close is a FIN that leaves the answer readable, not a reset.
            chunk = b"x" * 65536
            for _ in range(17):
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            s.sendall(
                b"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n"
                b"Content-Type: application/json\r\n\r\n"
            )
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"code":"TOO_LARGE"' in answer


def test_usersOfPasswordFileAndScram(twisted_reactor: None, tmp_path: Path) -> None:
    """
    With the password file and SCRAM plugins both in the chain, a user created by the API is
    written to both: it logs in at once with a password (3.1.1) and by SCRAM-SHA-256 (5.0
    enhanced authentication); a deleted user can do neither; "plugins" limits a creation.
    """
    from tests.test_e2e_scram import Client5

    http = startHttpBroker(tmp_path, scram=True, groups=False)
    try:
        created = http.request("POST", "/api/v1/users", {"username": "sam", "password": "pw"})
        assert created.json() == {"username": "sam", "plugins": ["passwordfile", "scram"]}
        _client(http, "sam-1", setup=_login("sam", "pw")).close()
        scramClient = Client5(http.broker.port)
        connack, _ = scramClient.login("sam-2", "sam", "pw")
        scramClient.raw.close()
        assert connack.return_code == 0
        only = http.request(
            "POST", "/api/v1/users", {"username": "sue", "password": "x", "plugins": ["scram"]}
        )
        assert only.json()["plugins"] == ["scram"]
        listed = http.request("GET", "/api/v1/users").json()["data"]
        assert {u["username"]: u["plugins"] for u in listed} == {
            "sam": ["passwordfile", "scram"],
            "sue": ["scram"],
        }
        assert http.request("DELETE", "/api/v1/users/sam").status == 204
        scramClient = Client5(http.broker.port)
        connack, _ = scramClient.login("sam-3", "sam", "pw")
        scramClient.raw.close()
        assert connack.return_code == 0x86
        assert "sam" not in (tmp_path / "scram").read_text()
        bad = http.request(
            "POST", "/api/v1/users", {"username": "x", "password": "x", "plugins": ["ldap"]}
        )
        assert bad.status == 400 and bad.json()["field"] == "plugins"
    finally:
        http.stop()


def test_groupRolesAndSettings(http: HttpBroker) -> None:
    """
    Owners and members through the API: a group is created with owners and its settings, a
    member made owner and back, an owner added, a removed owner loses the role; with events on,
    members are told on $group/NAME/$membership of who joined, however it was added.
    """
    created = http.request(
        "POST",
        "/api/v1/groups",
        {
            "name": "ops",
            "members": ["a:1"],
            "owners": ["lead"],
            "publish": "owners",
            "events": True,
        },
    )
    assert created.status == 201, created.body
    group = created.json()
    assert (group["owners"], group["members"], group["publish"], group["events"]) == (
        ["lead"],
        {"a": 1, "lead": 2},
        "owners",
        True,
    )
    a = _client(http, "a")
    a.subscribe("nothing", 0)  # a session of its own: group messages come without subscribing
    promoted = http.request("PUT", "/api/v1/groups/ops/members/a", {"role": "owner"})
    assert promoted.json()["owners"] == ["a", "lead"]
    demoted = http.request("PUT", "/api/v1/groups/ops/members/a", {"role": "member", "qos": 0})
    assert demoted.json()["owners"] == ["lead"] and demoted.json()["members"]["a"] == 0
    added = http.request("POST", "/api/v1/groups/ops/members", {"owners": ["boss"]})
    assert added.json()["owners"] == ["boss", "lead"] and added.json()["members"]["boss"] == 2
    joined = a.wait_for(1)[0]
    assert joined.topic == "$group/ops/$membership"
    assert json.loads(joined.payload) == {"event": "joined", "group": "ops", "member": "boss"}
    assert http.request("DELETE", "/api/v1/groups/ops/members/lead").status == 200
    assert http.request("GET", "/api/v1/groups/ops").json()["owners"] == ["boss"]
    cases: list[tuple[dict[str, Any], str]] = [({"role": "king"}, "role"), ({"qos": 5}, "qos")]
    for body, field in cases:
        bad = http.request("PUT", "/api/v1/groups/ops/members/a", body)
        assert (bad.status, bad.json()["field"]) == (400, field)
    cases = [
        ({"name": "x", "publish": "all"}, "publish"),
        ({"name": "x", "history": 5}, "history"),
        ({"name": "x", "owners": "lead"}, "owners"),
        ({"name": "x", "owners": ["a/b"]}, "owners"),
        ({"name": "x", "topic": "t/{nope}"}, "topic"),
    ]
    for body, field in cases:
        bad = http.request("POST", "/api/v1/groups", body)
        assert (bad.status, bad.json()["field"]) == (400, field), body
    assert http.request("PUT", "/api/v1/groups/ops/members/ghost", {"qos": 1}).status == 404
    a.close()


def test_aclRulesListed(http: HttpBroker, tmp_path: Path) -> None:
    """GET /api/v1/acl lists an ACL file's rules in order: anonymous, per user, patterns."""
    acl = tmp_path / "acl"
    acl.write_text(
        "topic read public/#\nuser alice\ntopic readwrite alice/#\ntopic deny alice/secret\n"
        "pattern write devices/%c/#\n"
    )
    context = PluginContext(reactor=e2e.reactor, configDirectory=str(tmp_path), brokerConfig=None)
    plugin = findPlugins()["aclfile"].build({"file": str(acl)}, context)
    http.broker.call(http.management.rules.__setitem__, "aclfile", plugin)
    assert http.request("GET", "/api/v1/acl", token=http.viewerToken).json()["data"] == [
        {"plugin": "aclfile", "topic": "public/#", "access": "read"},
        {"plugin": "aclfile", "user": "alice", "topic": "alice/#", "access": "readwrite"},
        {"plugin": "aclfile", "user": "alice", "topic": "alice/secret", "access": "deny"},
        {"plugin": "aclfile", "pattern": True, "topic": "devices/%c/#", "access": "write"},
    ]
