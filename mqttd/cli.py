"""
The C{mqttd} command: C{mqttd passwd}, which manages password files as C{mosquitto_passwd} does.
"""

from __future__ import annotations

import argparse
import getpass
import importlib
import os
import sys
import tempfile
from collections.abc import Sequence

from mqttd.plugin_loader import pluginPackage


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
            password = getpass.getpass("Password: ")
            if getpass.getpass("Reenter password: ") != password:
                print("mqttd passwd: passwords do not match", file=sys.stderr)
                return 1
        hashed = pw.hashPassword(password.encode("utf-8"), args.iterations)
        kept.append(f"{args.user}:{hashed.encode()}")
    _replace(args.file, "".join(line + "\n" for line in kept))
    return 0


def _replace(path: str, text: str) -> None:
    # Written beside the target and renamed over it, so a broker reloading on SIGHUP never reads
    # half a file; readable by its owner only, as the hashes are worth guarding.
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".mqttd-passwd-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mqttd", description="mqttd administration")
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
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error("-I must be positive")
    if args.create and args.delete:
        parser.error("-c and -D cannot be combined")
    return _passwd(args)
