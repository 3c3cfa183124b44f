"""
What an idle broker costs: only what its configuration uses is loaded.

Twisted imports pyOpenSSL, and with it cryptography, whenever it is installed (its TCP transport
and endpoint parser offer TLS from import time on), which is a fifth of an idle broker's memory.
A configuration that uses no TLS anywhere therefore runs as if pyOpenSSL were not installed: the
import is refused before Twisted's first attempt, which Twisted takes as TLS being unavailable.
"""

from __future__ import annotations

import configparser
import sys

# Keys and words in a configuration that may need TLS: mqttd's own TLS keys, ssl: and tls:
# endpoint strings, https URLs of plugins, bridges (which may dial out over TLS), plugin
# directories (whose plugins may need anything) and a cluster or the Redis store (txredisapi,
# their Redis client, imports twisted.internet.ssl unconditionally).
_TLS_WORDS = ("ssl", "tls", "certificate", "private_key", "https", "redis")
_TLS_SECTIONS = ("bridge:", "plugins", "cluster")


def needsTLS(path: str | None) -> bool:
    """
    Whether the configuration at C{path} (L{None}: the default one) may use TLS; when in doubt
    (unreadable, unparsable) it may.
    """
    if path is None:
        return False
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, UnicodeError, configparser.Error):
        return True
    for section in parser.sections():
        if section.startswith(_TLS_SECTIONS):
            return True
        for key, value in parser.items(section):
            text = f"{key} {value}".lower()
            if any(word in text for word in _TLS_WORDS):
                return True
    return False


def forgoUnusedTLS(path: str | None) -> bool:
    """
    Refuse the import of pyOpenSSL if the configuration at C{path} cannot use TLS and nothing
    imported it yet.

    @return: whether it is refused.
    """
    if "OpenSSL" in sys.modules or needsTLS(path):
        return False
    # None in sys.modules makes an import raise ImportError, as if the package were absent.
    sys.modules["OpenSSL"] = None  # type: ignore[assignment]
    return True
