"""
The dashboard in headless Chromium (driven over the DevTools protocol, tests/cdp.py) against a
running broker with paho-mqtt clients: what the page shows is read from its DOM, what it does is
checked on the MQTT side, and screenshots are saved under the test's temporary directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import e2e
from tests.cdp import Browser
from tests.httpapi import HttpBroker, detachGroups, startHttpBroker


@pytest.fixture
def http(twisted_reactor: None, tmp_path: Path) -> Iterator[HttpBroker]:
    e2e.REACTOR.takeErrors()
    running = startHttpBroker(tmp_path)
    running.request("POST", "/api/v1/users", {"username": "admin", "password": "s3cret"})
    running.request("POST", "/api/v1/users", {"username": "guest", "password": "guest"})
    yield running
    detachGroups(running)()
    running.stop()
    errors = e2e.REACTOR.takeErrors()
    assert not errors, "errors logged in the reactor:\n" + "\n".join(errors)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    made = Browser(tmp_path / "profile")
    yield made
    made.close()


def _logIn(browser: Browser, user: str, password: str) -> None:
    browser.waitFor("!document.querySelector('#login').hidden", "the login form")
    browser.evaluate(
        f"document.querySelector('#login-user').value = {json.dumps(user)};"
        f"document.querySelector('#login-password').value = {json.dumps(password)};"
        "document.querySelector('#login-form').requestSubmit(); true"
    )


def _show(browser: Browser, view: str) -> None:
    browser.evaluate(f"location.hash = '#{view}'; true")
    browser.waitFor(f"!document.querySelector('#{view}').hidden", f"the {view} view")


def test_dashboard(http: HttpBroker, browser: Browser, tmp_path: Path) -> None:
    """
    An admin logs in and sees the overview with the connected clients counted, finds a client
    in the clients view and kicks it (the paho client is really disconnected), adds a member to
    a group and makes it an owner (it then receives the group's next message) and publishes a
    message a subscriber receives at the chosen QoS.
    """
    device = e2e.Client(http.broker.port, "device-7")
    watcher = e2e.Client(http.broker.port, "watcher")
    watcher.subscribe("dash/#", 2)
    member = e2e.Client(http.broker.port, "b")
    assert http.request("POST", "/api/v1/groups", {"name": "crew", "members": ["a"]}).status == 201
    http.request("POST", "/api/v1/publish", {"topic": "dash/kept", "payload": "x", "retain": True})
    watcher.wait_for(1)
    browser.open(http.url + "/")
    _logIn(browser, "admin", "s3cret")
    browser.waitFor(
        "!document.querySelector('#overview').hidden"
        " && document.querySelector('#ov-connections').textContent === '3'",
        "the overview counting three connections",
    )
    assert browser.evaluate("document.querySelector('#who-name').textContent") == "admin"
    retained = http.request("GET", "/api/v1/status").json()["retained"]
    assert browser.evaluate("document.querySelector('#ov-retained').textContent") == str(retained)
    browser.screenshot(tmp_path / "overview.png")

    _show(browser, "clients")
    row = "document.querySelector('#clients-rows tr[data-clientid=\"device-7\"]')"
    browser.waitFor(row, "device-7 in the clients table")
    assert browser.evaluate(f"{row}.children[2].textContent") == e2e.HOST
    browser.screenshot(tmp_path / "clients.png")
    browser.evaluate(f"{row}.querySelector('button.kick').click(); true")
    assert device.disconnected.wait(e2e.TIMEOUT)
    http.broker.wait_gone("device-7")
    browser.waitFor(f"!{row}", "device-7 to leave the table")
    assert "device-7 disconnected" in browser.evaluate(
        "document.querySelector('#message').textContent"
    )

    _show(browser, "groups")
    group = "document.querySelector('.group[data-group=\"crew\"]')"
    browser.waitFor(group, "the crew group")
    browser.evaluate(
        f"{group}.querySelector('input.add-member').value = 'b:1';"
        f"{group}.querySelector('form').requestSubmit(); true"
    )
    browser.waitFor(
        'document.querySelector(\'.group[data-group="crew"] li[data-member="b"]\')',
        "b listed in crew",
    )
    b = 'document.querySelector(\'.group[data-group="crew"] li[data-member="b"]\')'
    browser.evaluate(f"{b}.querySelector('button.role').click(); true")
    browser.waitFor(
        'document.querySelector(\'.group[data-group="crew"] li[data-member="b"]\')'
        ".dataset.role === 'owner'",
        "b shown as an owner",
    )
    assert http.request("GET", "/api/v1/groups/crew").json()["owners"] == ["b"]
    browser.screenshot(tmp_path / "groups.png")
    watcher.publish("$group/crew/news", b"welcome", 1)
    (news,) = member.wait_for(1)
    assert (news.payload, news.qos) == (b"welcome", 1)

    _show(browser, "publish")
    browser.evaluate(
        "document.querySelector('#publish-topic').value = 'dash/hello';"
        "document.querySelector('#publish-payload').value = 'from the browser';"
        "document.querySelector('#publish-qos').value = '1';"
        "document.querySelector('#publish-form').requestSubmit(); true"
    )
    (got,) = watcher.wait_for(1)
    assert (got.topic, got.payload, got.qos) == ("dash/hello", b"from the browser", 1)
    browser.screenshot(tmp_path / "publish.png")
    for name in ("overview", "clients", "groups", "publish"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for c in (device, watcher, member):
        c.close()


def test_dashboardRefusesNonAdmin(http: HttpBroker, browser: Browser) -> None:
    """A valid user not named in admins stays on the login form with the refusal shown."""
    browser.open(http.url + "/")
    _logIn(browser, "guest", "guest")
    text = browser.waitFor(
        "document.querySelector('#message').hidden ? ''"
        " : document.querySelector('#message').textContent",
        "the refusal",
    )
    assert "not an administrator" in text
    assert browser.evaluate("document.querySelector('#overview').hidden") is True
    assert browser.evaluate("document.cookie") == ""


def test_dashboardUsersRetainedSubscriptions(
    http: HttpBroker, browser: Browser, tmp_path: Path
) -> None:
    """
    Through the page: a user is added (and connects at once), its password reset (the new one
    works) and deleted; a device is subscribed server-side (and receives); a retained message
    is deleted (a new subscriber no longer gets it).
    """
    device = e2e.Client(http.broker.port, "dev")
    http.broker.inject("cfg/dev", b"v1", qos=1, retain=True)
    browser.open(http.url + "/")
    _logIn(browser, "admin", "s3cret")
    browser.waitFor("!document.querySelector('#overview').hidden", "the overview")

    _show(browser, "users")
    browser.evaluate(
        "document.querySelector('#user-name').value = 'ivy';"
        "document.querySelector('#user-password').value = 'first';"
        "document.querySelector('#user-create').requestSubmit(); true"
    )
    row = "document.querySelector('#users-rows tr[data-username=\"ivy\"]')"
    browser.waitFor(row, "ivy in the users table")
    e2e.Client(http.broker.port, "ivy-1", setup=lambda c: c.username_pw_set("ivy", "first")).close()
    browser.evaluate(
        f"{row}.querySelector('input').value = 'second';"
        f"{row}.querySelectorAll('button')[0].click(); true"
    )
    browser.waitFor(
        "document.querySelector('#message').textContent === 'password of ivy changed'",
        "the reset",
    )
    e2e.Client(
        http.broker.port, "ivy-2", setup=lambda c: c.username_pw_set("ivy", "second")
    ).close()
    browser.screenshot(tmp_path / "users.png")
    browser.evaluate(f"{row}.querySelector('button.danger').click(); true")
    browser.waitFor(f"!{row}", "ivy to leave the table")
    assert "ivy" not in http.passwd.read_text()

    _show(browser, "subscriptions")
    browser.evaluate(
        "document.querySelector('#subscribe-client').value = 'dev';"
        "document.querySelector('#subscribe-topic').value = 'cmd/#';"
        "document.querySelector('#subscribe-form').requestSubmit(); true"
    )
    browser.waitFor(
        "[...document.querySelectorAll('#subscriptions-rows td')]"
        ".some(td => td.textContent === 'cmd/#')",
        "the new subscription listed",
    )
    http.request("POST", "/api/v1/publish", {"topic": "cmd/x", "payload": "go", "qos": 1})
    (command,) = device.wait_for(1)
    assert (command.topic, command.payload, command.qos) == ("cmd/x", b"go", 1)

    _show(browser, "retained")
    cell = (
        "[...document.querySelectorAll('#retained-rows tr')]"
        ".find(tr => tr.firstChild.textContent === 'cfg/dev')"
    )
    browser.waitFor(cell, "cfg/dev listed")
    browser.screenshot(tmp_path / "retained.png")
    browser.evaluate(f"{cell}.querySelector('button').click(); true")
    browser.waitFor(f"!{cell}", "cfg/dev to leave the table")
    late = e2e.Client(http.broker.port, "late")
    late.subscribe("cfg/#", 1)
    late.publish("cfg/end", b"end", 1)
    assert [m.topic for m in late.wait_for(1)] == ["cfg/end"]
    for c in (device, late):
        c.close()
