"""
C{mqttd ctl}: a running broker managed from the terminal (as C{emqx ctl} or C{mosquitto_ctrl}),
through its HTTP listener's REST API (docs/http-api.md).

The API's URL comes from C{--url}, else C{$MQTTD_URL}, else C{http://127.0.0.1:18083}; the key
from C{--key-file}, else C{$MQTTD_API_KEY}.  Lists print one line per item, columns separated by
tabs; single objects print as indented JSON.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

DEFAULT_URL = "http://127.0.0.1:18083"
TIMEOUT = 30.0


class CtlError(Exception):
    """The API refused or could not be reached; the message says why."""


class Api:
    def __init__(self, url: str, key: str | None, cafile: str | None = None) -> None:
        self.url = url.rstrip("/") + "/api/v1"
        self.key = key
        # An HTTPS listener's certificate is checked against the system's CAs, or these.
        self.context = ssl.create_default_context(cafile=cafile) if cafile else None

    def call(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        headers = {"Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        given = {k: v for k, v in query.items() if v is not None}
        url = self.url + path + ("?" + urllib.parse.urlencode(given) if given else "")
        request = urllib.request.Request(url, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT, context=self.context) as answer:
                text = answer.read()
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read())["message"]
            except (ValueError, KeyError, TypeError):
                message = e.reason
            raise CtlError(f"{e.code}: {message}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CtlError(f"cannot reach {self.url}: {reason}") from None
        return json.loads(text) if text else None

    def everything(self, path: str, **query: Any) -> list[Any]:
        """Every item of a paged list."""
        items: list[Any] = []
        page = 1
        while True:
            answer = self.call("GET", path, page=page, limit=1000, **query)
            items.extend(answer["data"])
            if len(items) >= answer["meta"]["count"] or not answer["data"]:
                return items
            page += 1


def _part(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _show(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _rows(rows: Sequence[Sequence[Any]]) -> None:
    for row in rows:
        print("\t".join("" if v is None else str(v) for v in row))


def _password(given: str | None) -> str:
    if given is not None:
        return given
    password = getpass.getpass("Password: ")
    if getpass.getpass("Reenter password: ") != password:
        raise CtlError("passwords do not match")
    return password


def run(args: argparse.Namespace) -> None:
    key = os.environ.get("MQTTD_API_KEY")
    if args.key_file is not None:
        try:
            with open(args.key_file, encoding="utf-8") as f:
                key = f.read().strip()
        except OSError as e:
            raise CtlError(f"cannot read {args.key_file}: {e.strerror}") from None
    api = Api(args.url or os.environ.get("MQTTD_URL") or DEFAULT_URL, key, args.cafile)
    command, action = args.area, getattr(args, "action", None)
    if command == "status":
        _show(api.call("GET", "/stats"))
    elif command == "clients":
        if action == "list":
            clients = api.everything(
                "/clients", clientid=args.clientid, username=args.username, address=args.address
            )
            _rows([(c["clientid"], c["username"], c["address"], c["protocol"]) for c in clients])
        elif action == "show":
            _show(api.call("GET", f"/clients/{_part(args.clientid)}"))
        else:
            api.call("DELETE", f"/clients/{_part(args.clientid)}")
    elif command == "sessions":
        if action == "list":
            _rows([(s["clientid"], s["queued"]) for s in api.everything("/sessions")])
        else:
            api.call("DELETE", f"/sessions/{_part(args.clientid)}")
    elif command == "subscriptions":
        if action == "list":
            found = api.everything("/subscriptions", clientid=args.clientid)
            _rows([(s["clientid"], s["topic"], s["qos"]) for s in found])
        elif action == "add":
            api.call(
                "POST",
                f"/clients/{_part(args.clientid)}/subscriptions",
                {"topic": args.topic, "qos": args.qos},
            )
        else:
            api.call("DELETE", f"/clients/{_part(args.clientid)}/subscriptions/{_part(args.topic)}")
    elif command == "publish":
        api.call(
            "POST",
            "/publish",
            {"topic": args.topic, "payload": args.payload, "qos": args.qos, "retain": args.retain},
        )
    elif command == "retained":
        if action == "list":
            found = api.everything("/retained", filter=args.filter)
            _rows([(m["topic"], m["qos"], m["payload"]) for m in found])
        else:
            api.call("DELETE", "/retained/" + "/".join(_part(p) for p in args.topic.split("/")))
    elif command == "groups":
        _groups(api, args)
    elif command == "users":
        _users(api, args)


def _groups(api: Api, args: argparse.Namespace) -> None:
    action = args.action
    if action == "list" and args.name is None:
        _rows([(g["group"], len(g["members"])) for g in api.everything("/groups")])
    elif action == "list":
        _show(api.call("GET", f"/groups/{_part(args.name)}"))
    elif action == "create":
        body: dict[str, Any] = {"name": args.name, "members": args.members, "by": args.by}
        if args.topic is not None:
            body["topic"] = args.topic
        if args.owners:
            body["owners"] = args.owners.split(",")
        api.call("POST", "/groups", body)
    elif action == "role":
        path = f"/groups/{_part(args.name)}/members/{_part(args.member)}"
        api.call("PUT", path, {"role": args.role})
    elif action == "add":
        api.call("POST", f"/groups/{_part(args.name)}/members", {"members": args.members})
    elif action == "remove":
        for member in args.members:
            api.call("DELETE", f"/groups/{_part(args.name)}/members/{_part(member)}")
    else:
        api.call("DELETE", f"/groups/{_part(args.name)}")


def _users(api: Api, args: argparse.Namespace) -> None:
    action = args.action
    if action == "list":
        users = api.everything("/users")
        _rows(
            [(u["username"], ",".join(u["plugins"]), "admin" if u["admin"] else "") for u in users]
        )
    elif action == "add":
        api.call(
            "POST", "/users", {"username": args.username, "password": _password(args.password)}
        )
    elif action == "passwd":
        api.call("PUT", f"/users/{_part(args.username)}", {"password": _password(args.password)})
    else:
        api.call("DELETE", f"/users/{_part(args.username)}")


def addParser(commands: Any) -> None:
    """The C{ctl} subcommand of C{mqttd}."""
    ctl = commands.add_parser(
        "ctl",
        help="manage a running broker through its HTTP API",
        description="Manage a running broker through its HTTP listener's REST API. The URL is"
        f" --url, else $MQTTD_URL, else {DEFAULT_URL}; the API key is read from --key-file, else"
        " $MQTTD_API_KEY (make one with mqttd apikey add).",
    )
    ctl.add_argument("--url", metavar="URL", help="the HTTP listener, e.g. " + DEFAULT_URL)
    ctl.add_argument("--key-file", metavar="FILE", help="a file holding the API key")
    ctl.add_argument(
        "--cafile", metavar="PEM", help="CA certificates an https:// listener is checked against"
    )
    areas = ctl.add_subparsers(dest="area", required=True)
    areas.add_parser("status", help="broker status and counters")

    clients = areas.add_parser("clients", help="connected clients").add_subparsers(
        dest="action", required=True
    )
    listing = clients.add_parser("list", help="connected clients")
    listing.add_argument("--clientid", help="client ids containing this")
    listing.add_argument("--username", help="this user's clients")
    listing.add_argument("--address", help="addresses containing this")
    for action, text in (("show", "one client"), ("kick", "disconnect a client")):
        clients.add_parser(action, help=text).add_argument("clientid", metavar="CLIENTID")

    sessions = areas.add_parser("sessions", help="offline persistent sessions").add_subparsers(
        dest="action", required=True
    )
    sessions.add_parser("list", help="offline sessions and their queued messages")
    sessions.add_parser("delete", help="end a session").add_argument("clientid")

    subscriptions = areas.add_parser(
        "subscriptions", help="subscriptions, also on a client's behalf"
    ).add_subparsers(dest="action", required=True)
    subscriptions.add_parser("list", help="every subscription").add_argument(
        "--clientid", help="of client ids containing this"
    )
    for action, text in (("add", "subscribe a client"), ("remove", "unsubscribe a client")):
        parser = subscriptions.add_parser(action, help=text)
        parser.add_argument("clientid", metavar="CLIENTID")
        parser.add_argument("topic", metavar="FILTER")
        if action == "add":
            parser.add_argument("--qos", type=int, choices=(0, 1, 2), default=0)

    publish = areas.add_parser("publish", help="publish a message")
    publish.add_argument("topic", metavar="TOPIC")
    publish.add_argument("payload", metavar="PAYLOAD")
    publish.add_argument("--qos", "-q", type=int, choices=(0, 1, 2), default=0)
    publish.add_argument("--retain", "-r", action="store_true")

    retained = areas.add_parser("retained", help="retained messages").add_subparsers(
        dest="action", required=True
    )
    retained.add_parser("list", help="retained messages").add_argument(
        "filter", metavar="FILTER", nargs="?", default="#"
    )
    retained.add_parser("delete", help="delete one").add_argument("topic", metavar="TOPIC")

    groups = areas.add_parser("groups", help="virtual groups").add_subparsers(
        dest="action", required=True
    )
    groups.add_parser("list", help="groups, or one group").add_argument("name", nargs="?")
    create = groups.add_parser("create", help="create a group")
    create.add_argument("name", metavar="NAME")
    create.add_argument("members", metavar="MEMBER", nargs="*", help="name or name:QOS")
    create.add_argument("--by", choices=("clientid", "username"), default="clientid")
    create.add_argument("--topic", metavar="TEMPLATE", help="delivered topic template")
    create.add_argument("--owners", metavar="NAME,...", help="members who manage the group")
    role = groups.add_parser("role", help="make a member an owner, or an owner a member")
    role.add_argument("name", metavar="NAME")
    role.add_argument("member", metavar="MEMBER")
    role.add_argument("role", choices=("owner", "member"))
    for action, text in (("add", "add members"), ("remove", "remove members")):
        parser = groups.add_parser(action, help=text)
        parser.add_argument("name", metavar="NAME")
        parser.add_argument("members", metavar="MEMBER", nargs="+")
    groups.add_parser("delete", help="delete a group").add_argument("name", metavar="NAME")

    users = areas.add_parser("users", help="users of the password and SCRAM files")
    userActions = users.add_subparsers(dest="action", required=True)
    userActions.add_parser("list", help="users, their plugins and whether admin")
    for action, text in (("add", "create a user"), ("passwd", "change a password")):
        parser = userActions.add_parser(action, help=text)
        parser.add_argument("username", metavar="USER")
        parser.add_argument("password", metavar="PASSWORD", nargs="?", help="prompted if absent")
    userActions.add_parser("delete", help="delete a user").add_argument("username")


def main(args: argparse.Namespace) -> int:
    try:
        run(args)
    except CtlError as e:
        print(f"mqttd ctl: {e}", file=sys.stderr)
        return 1
    return 0
