"""
Replacing a file whole, for the commands and plugins that rewrite the files a running broker reads.
"""

from __future__ import annotations

import os
import tempfile


def replaceFile(path: str, text: str) -> None:
    """
    Write C{text} beside C{path} and rename it over C{path}, so a broker reloading on SIGHUP
    never reads half a file; readable by its owner only, as these files hold secrets' hashes.

    @raise OSError: the directory cannot be written; C{path} is unchanged.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".mqttd-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def replaceUserLine(path: str, username: str, line: str | None) -> bool:
    """
    Rewrite the C{user:...} file C{path}, its line for C{username} replaced by C{line} (or
    appended, or with C{line} L{None} removed); every other line, comments too, is kept.

    @return: whether C{username} had a line.
    @raise OSError: the file cannot be read (other than missing) or written.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    kept = [entry for entry in lines if entry.partition(":")[0] != username]
    if line is not None:
        kept.append(line)
    replaceFile(path, "".join(entry + "\n" for entry in kept))
    return len(kept) != len(lines) + (line is not None)
