"""
The C{mqttd} command: C{mqttd passwd}, which manages password files as C{mosquitto_passwd} does,
C{mqttd scram}, which manages the credentials files of the C{scram} plugin, C{mqttd apikey}, which
manages the HTTP API's keys, C{mqttd ctl} (L{mqttd.ctl}), which manages a running broker through
that API, and C{mqttd groups},
which manages the virtual groups a running broker reads: in its SQLite store, or in the virtual
groups plugin's own file when the broker has no SQLite store.
"""

from __future__ import annotations

import argparse
import getpass
import importlib
import json
import os
import sqlite3
import sys
from collections.abc import Sequence
from contextlib import closing
from dataclasses import replace
from typing import Any

from mqttd import __version__, ctl
from mqttd.config import ConfigError, load_config
from mqttd.files import replaceFile
from mqttd.plugin_loader import pluginPackage
from mqttd.store import StoreError


def _passwd(args: argparse.Namespace) -> int:
    pluginPackage()
    pw = importlib.import_module("mqttd.plugins.passwordfile")
    if ":" in args.user or not args.user:
        print("mqttd passwd: a user name cannot be empty or hold ':'", file=sys.stderr)
        return 1
    lines: list[str] = []
    if not args.create:
        try:
            with open(args.file, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as e:
            print(f"mqttd passwd: cannot read {args.file}: {e.strerror}", file=sys.stderr)
            return 1
    kept = [line for line in lines if line.partition(":")[0] != args.user]
    if args.delete:
        if len(kept) == len(lines):
            print(f"mqttd passwd: user {args.user} not found", file=sys.stderr)
            return 1
    else:
        password = args.password
        if args.batch:
            if password is None:
                print("mqttd passwd: -b needs the password on the command line", file=sys.stderr)
                return 1
        elif password is None:
            password = _askPassword("mqttd passwd")
            if password is None:
                return 1
        hashed = pw.hashPassword(password.encode("utf-8"), args.iterations)
        kept.append(f"{args.user}:{hashed.encode()}")
    return _write("mqttd passwd", args.file, kept)


def _askPassword(command: str) -> str | None:
    """
    The password typed twice at the terminal; L{None}, said why on stderr, when the two differ
    or input ends first (a script piping nothing in gets a message, not a traceback).
    """
    try:
        password = getpass.getpass("Password: ")
        again = getpass.getpass("Reenter password: ")
    except EOFError:
        print(f"\n{command}: no password given (end of input)", file=sys.stderr)
        return None
    if again != password:
        print(f"{command}: passwords do not match", file=sys.stderr)
        return None
    return password


def _write(command: str, path: str, lines: Sequence[str]) -> int:
    try:
        replaceFile(path, "".join(line + "\n" for line in lines))
    except OSError as e:
        print(f"{command}: cannot write {path}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


def _scram(args: argparse.Namespace) -> int:
    pluginPackage()
    scram = importlib.import_module("mqttd.plugins.scram")
    if args.action != "list" and (":" in args.user or not args.user):
        print("mqttd scram: a user name cannot be empty or hold ':'", file=sys.stderr)
        return 1
    lines: list[str] = []
    if os.path.exists(args.file) or args.action != "add":
        try:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
            # Checked whole, so a damaged file is reported rather than rewritten or listed in part.
            users = scram.parseScramFile(text)
        except OSError as e:
            print(f"mqttd scram: cannot read {args.file}: {e.strerror}", file=sys.stderr)
            return 1
        except scram.ScramFileError as e:
            print(f"mqttd scram: {args.file}: {e}", file=sys.stderr)
            return 1
        lines = text.splitlines()
        if args.action == "list":
            for user in users:
                print(user)
            return 0
    kept = [line for line in lines if line.partition(":")[0] != args.user]
    if args.action == "delete":
        if len(kept) == len(lines):
            print(f"mqttd scram: user {args.user} not found", file=sys.stderr)
            return 1
        return _write("mqttd scram", args.file, kept)
    password = args.password
    if password is None:
        password = _askPassword("mqttd scram")
        if password is None:
            return 1
    credential = scram.makeCredential(password.encode("utf-8"), args.iterations)
    kept.append(f"{args.user}:{credential.encode()}")
    return _write("mqttd scram", args.file, kept)


def _scramParser(commands: Any) -> None:
    scram = commands.add_parser(
        "scram",
        help="manage SCRAM-SHA-256 credentials files",
        description="Manage the credentials file of the scram plugin (MQTT 5.0 enhanced"
        " authentication): only salted keys are stored, never the password.",
    )
    actions = scram.add_subparsers(dest="action", required=True)
    add = actions.add_parser(
        "add", help="add or update a user", description="Add or update USER in FILE."
    )
    add.add_argument(
        "--iterations",
        "-i",
        type=int,
        default=4096,
        help="PBKDF2 iterations (default 4096, RFC 7677's minimum)",
    )
    add.add_argument("file", metavar="FILE")
    add.add_argument("user", metavar="USER")
    add.add_argument("password", metavar="PASSWORD", nargs="?", help="prompted for when absent")
    listing = actions.add_parser(
        "list", help="list the users", description="Print the users of FILE, one a line."
    )
    listing.add_argument("file", metavar="FILE")
    delete = actions.add_parser(
        "delete", help="delete a user", description="Delete USER from FILE."
    )
    delete.add_argument("file", metavar="FILE")
    delete.add_argument("user", metavar="USER")


def _isBrokerStore(path: str, groupsApplication: int) -> bool:
    # A groups file carries its application_id; a broker's SQLite store has a schema version and
    # no such id.  A missing or unreadable file is left to the groups file's own checks.
    if not os.path.exists(path):
        return False
    try:
        with closing(sqlite3.connect(path)) as db:
            application = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError:
        return False
    return bool(application != groupsApplication and version > 0)


def _groupsFile(args: argparse.Namespace, vg: Any) -> tuple[str, bool]:
    """
    Where the groups are: the broker's SQLite store when the configuration selects it
    (C{[store] plugin = sqlite}) or C{--file} names one, else the virtual groups plugin's file.

    @return: the path, and whether it is a broker's store.
    """
    if args.file is not None:
        path = str(args.file)
        return path, _isBrokerStore(path, vg.APPLICATION_ID)
    config = load_config(args.config)
    inStore = config.storePlugin is not None and config.pluginKind(config.storePlugin) == "sqlite"
    if inStore:
        assert config.storePlugin is not None
        section, default = config.storePlugin, "mqttd.db"
    else:
        # The virtual groups plugin's section, under its own name or an instance name.
        named = [n for n in config.pluginSections if config.pluginKind(n) == "virtual_groups"]
        section, default = (named[0] if named else "virtual_groups"), "groups.db"
    path = config.pluginSections.get(section, {}).get("path", default).strip()
    path = os.path.join(config.configDirectory, os.path.expanduser(path))
    if args.action != "list":
        # As the broker does on start: the command may come first, on a fresh installation.
        os.makedirs(os.path.dirname(os.path.normpath(path)), exist_ok=True)
    return path, inStore


def _openGroups(path: str, inStore: bool, vg: Any) -> tuple[sqlite3.Connection, Any]:
    """
    The database at C{path}, open, and the module that reads (C{readGroups}) and writes
    (C{writeGroups}) groups there.
    """
    if inStore:
        schema: Any = importlib.import_module("mqttd.plugins.sqlite_schema")
        return schema.openDatabase(path), importlib.import_module("mqttd.plugins.sqlite_groups")
    return vg.openGroupDatabase(path), vg


def _groups(args: argparse.Namespace) -> int:
    pluginPackage()
    vg: Any = importlib.import_module("mqttd.plugins.virtual_groups")
    try:
        path, inStore = _groupsFile(args, vg)
        if args.action == "list" and not os.path.exists(path):
            # Looking must not create the file (nor a store) a broker would then find.
            if args.name is not None:
                raise vg.GroupError(f"no group {args.name!r}")
            return 0
        # Checked before the file is opened, so a typo creates nothing.
        members = (
            dict(vg.parseMember(m, args.qos) for m in args.members)
            if args.action in ("create", "add")
            else {}
        )
        db, layout = _openGroups(path, inStore, vg)
        with closing(db):
            groups = layout.readGroups(db)
            existing = groups.get(args.name) if args.name is not None else None
            if args.action == "list":
                if args.name is None:
                    for name in sorted(groups):
                        print(name)
                    return 0
                if existing is None:
                    raise vg.GroupError(f"no group {args.name!r}")
                print(json.dumps(vg.describe(existing), indent=2))
                return 0
            if args.action == "delete":
                if existing is None:
                    raise vg.GroupError(f"no group {args.name!r}")
                layout.writeGroups(db, (), (args.name,))
                return 0
            if args.action == "create":
                if existing is not None:
                    raise vg.GroupError(f"group {args.name!r} exists")
                group = vg.makeGroup(
                    args.name,
                    members,
                    byUsername=args.by == "username",
                    topic=args.topic,
                    echo=args.echo,
                    owners=[o for o in (args.owners or "").split(",") if o],
                    publish=args.publish,
                    events=args.events,
                    inbox=args.inbox,
                    history=args.history,
                )
            elif args.action == "add":
                base = existing if existing is not None else vg.makeGroup(args.name)
                group = replace(base, members={**base.members, **members})
            else:
                if existing is None:
                    raise vg.GroupError(f"no group {args.name!r}")
                gone = set(args.members)
                kept = {m: q for m, q in existing.members.items() if m not in gone}
                group = replace(existing, members=kept)
            layout.writeGroups(db, (group,), ())
    except (ConfigError, StoreError, vg.GroupError) as e:
        print(f"mqttd groups: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"mqttd groups: {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


def _groupsParser(commands: Any) -> None:
    groups = commands.add_parser(
        "groups",
        help="manage virtual groups",
        description="Create, change, delete and list the virtual groups a running broker reads:"
        " in its SQLite store ([store] plugin = sqlite), else in the virtual_groups plugin's own"
        " file.  The broker picks changes up within the store's group_poll_interval (the"
        " plugin's poll_interval for its own file).",
    )
    where = groups.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--config", "-c", metavar="INI", help="the broker's mqttd.ini: the file its groups are in"
    )
    where.add_argument(
        "--file", "-f", metavar="DB", help="a groups file, or a broker's SQLite store, itself"
    )
    actions = groups.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="group names, or one group's definition")
    listing.add_argument("name", metavar="NAME", nargs="?")
    for action, text in (
        ("create", "create a group"),
        ("add", "add members (creating the group if need be)"),
        ("remove", "remove members"),
        ("delete", "delete a group"),
    ):
        parser = actions.add_parser(action, help=text, description=text)
        parser.add_argument("name", metavar="NAME")
        if action != "delete":
            parser.add_argument(
                "members",
                metavar="MEMBER",
                nargs="*" if action == "create" else "+",
                help="a client id (a user name with --by username); MEMBER:QOS sets its QoS",
            )
        if action in ("create", "add"):
            parser.add_argument(
                "--qos", type=int, choices=(0, 1, 2), default=2, help="members' highest QoS"
            )
        if action == "create":
            parser.add_argument("--by", choices=("clientid", "username"), default="clientid")
            parser.add_argument("--topic", metavar="TEMPLATE", help="delivered topic template")
            parser.add_argument("--echo", action="store_true", help="deliver to the publisher too")
            parser.add_argument(
                "--owners", metavar="A,B", help="members who add and remove the group's members"
            )
            parser.add_argument(
                "--publish",
                choices=("members", "owners", "acl"),
                default="members",
                help="who may publish: its members, its owners alone, or whom the ACL allows",
            )
            parser.add_argument(
                "--events", action="store_true", help="announce members joining and leaving"
            )
            parser.add_argument(
                "--inbox", action="store_true", help="keep messages for members who are away"
            )
            parser.add_argument(
                "--history",
                type=int,
                default=0,
                metavar="N",
                help="with --inbox: the last N messages a member added later is given",
            )


def _apikeyFile(args: argparse.Namespace) -> str:
    """The key file: C{--file}, else C{api_keys} of the configuration's (only, or named) HTTP
    listener."""
    if args.file is not None:
        return str(args.file)
    config = load_config(args.config)
    http = [
        listener
        for listener in config.listeners
        if listener.protocol == "http" and (args.listener in (None, listener.name))
    ]
    if len(http) != 1 or http[0].api_keys is None:
        raise ConfigError(
            config.source or args.config,
            None,
            None,
            "expected one protocol = http listener with api_keys"
            + ("" if args.listener is None else f" named {args.listener}")
            + "; choose one with --listener, or give --file",
        )
    return http[0].api_keys


def _apikey(args: argparse.Namespace) -> int:
    from mqttd.http.apikeys import ApiKeyError, ApiKeys

    try:
        keys = ApiKeys(_apikeyFile(args))
        if args.action == "add":
            print(keys.add(args.name, args.role))
            print(
                f"mqttd apikey: the key {args.name} ({args.role}) is shown only now;"
                " send it as Authorization: Bearer KEY",
                file=sys.stderr,
            )
        elif args.action == "delete":
            if not keys.delete(args.name):
                raise ApiKeyError(f"no key {args.name!r}")
        else:
            for key in keys.keys().values():
                print(f"{key.name} {key.role}")
    except (ConfigError, ApiKeyError) as e:
        print(f"mqttd apikey: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"mqttd apikey: {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


def _apikeyParser(commands: Any) -> None:
    apikey = commands.add_parser(
        "apikey",
        help="manage the HTTP API's keys",
        description="Add, delete and list the API keys of an HTTP listener (its api_keys file)."
        " A new key is printed once; the file keeps only its SHA-256.  Changes count at the"
        " next request, without a restart.",
    )
    where = apikey.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", "-c", metavar="INI", help="the broker's mqttd.ini")
    where.add_argument("--file", "-f", metavar="FILE", help="an api_keys file itself")
    apikey.add_argument("--listener", "-l", metavar="NAME", help="which HTTP listener's keys")
    actions = apikey.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="make a key and print it")
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--role", choices=("admin", "viewer"), default="admin", help="viewer keys may only read"
    )
    delete = actions.add_parser("delete", help="delete a key")
    delete.add_argument("name", metavar="NAME")
    actions.add_parser("list", help="key names and roles")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mqttd", description="mqttd administration")
    parser.add_argument("--version", action="version", version=f"mqttd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    passwd = commands.add_parser(
        "passwd",
        help="create or update a mosquitto-format password file",
        description="Add, update or delete a user of a password file, like mosquitto_passwd;"
        " entries are written as $7$ (PBKDF2-SHA512).",
    )
    passwd.add_argument("-c", dest="create", action="store_true", help="create (overwrite) FILE")
    passwd.add_argument(
        "-b", dest="batch", action="store_true", help="password from the command line"
    )
    passwd.add_argument("-D", dest="delete", action="store_true", help="delete USER")
    passwd.add_argument(
        "-I", dest="iterations", type=int, default=101, help="PBKDF2 iterations (default 101)"
    )
    passwd.add_argument("file", metavar="FILE")
    passwd.add_argument("user", metavar="USER")
    passwd.add_argument("password", metavar="PASSWORD", nargs="?")
    _groupsParser(commands)
    _scramParser(commands)
    _apikeyParser(commands)
    ctl.addParser(commands)
    args = parser.parse_args(argv)
    try:
        return _run(parser, args)
    except KeyboardInterrupt:
        # Interrupted at a prompt: nothing was written.
        print(file=sys.stderr)
        return 130


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "apikey":
        return _apikey(args)
    if args.command == "ctl":
        return ctl.main(args)
    if args.command == "groups":
        return _groups(args)
    if args.command == "scram":
        if args.action == "add" and args.iterations < 1:
            parser.error("--iterations must be positive")
        return _scram(args)
    if args.iterations < 1:
        parser.error("-I must be positive")
    if args.create and args.delete:
        parser.error("-c and -D cannot be combined")
    return _passwd(args)
