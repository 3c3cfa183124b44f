"""
What the durable stores share: one writer thread off the reactor, and the
two durability modes.

The reactor thread only records operations (plain values, cheap to build);
the writer thread applies them in batches, each batch one transaction, and
the reactor hears back through L{deferToThreadPool}.  Batches are in record
order and never overlap, so the file sees every change in the order the
broker made it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from .interfaces import PluginConfigError, PluginContext
from .store import StoreError

Op = TypeVar("Op")
T = TypeVar("T")
S = TypeVar("S")

SYNC = "sync"
BATCHED = "batched"
DEFAULT_FLUSH_MS = 50


def durabilityOptions(options: Mapping[str, str], known: frozenset[str]) -> tuple[bool, float]:
    """
    Check a store's C{[plugin:NAME]} section for unknown keys (C{known} and
    the keys every store has: C{durability}, C{flush_ms}, C{recover}) and
    parse its C{durability} (C{sync} by default) and C{flush_ms}.

    @return: C{(sync, flushInterval)}, the interval in seconds.
    @raise PluginConfigError: an option is unknown or malformed.
    """
    shared = {"durability", "flush_ms", "recover"}
    for key in options:
        if key not in known | shared:
            expected = ", ".join(sorted(known | shared))
            raise PluginConfigError(key, f"unknown key; expected one of {expected}")
    durability = options.get("durability", SYNC).strip()
    if durability not in (SYNC, BATCHED):
        raise PluginConfigError("durability", f"expected sync or batched, got {durability!r}")
    text = options.get("flush_ms", str(DEFAULT_FLUSH_MS)).strip()
    if not text.isdigit() or int(text) < 1:
        raise PluginConfigError("flush_ms", f"expected a positive integer, got {text!r}")
    return durability == SYNC, int(text) / 1000.0


def recoverOption(options: Mapping[str, str]) -> bool:
    """
    A store's C{recover} option: whether to start from what can be read of a
    damaged store file (keeping a copy of it) rather than refuse to start.

    @raise PluginConfigError: it is not C{true} or C{false}.
    """
    text = options.get("recover", "false").strip()
    if text not in ("true", "false"):
        raise PluginConfigError("recover", f"expected true or false, got {text!r}")
    return text == "true"


def openStoreFile(
    options: Mapping[str, str], context: PluginContext, default: str, open: Callable[[str], S]
) -> S:
    """
    Resolve a store's C{path} option against the configuration's directory,
    create its directory, and open the store there with C{open(path)}.

    @raise PluginConfigError: naming C{path}, when the directory cannot be
        made or the file is not a usable store.
    """
    path = os.path.normpath(context.path(options.get("path", default).strip()))
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return open(path)
    except OSError as e:
        raise PluginConfigError("path", f"{path}: {e.strerror}") from None
    except StoreError as e:
        raise PluginConfigError("path", str(e)) from None


class StoreLock:
    """
    The exclusive claim of one broker process on a store file: an OS lock
    (C{flock}) on C{PATH.lock} beside it, holding the owner's pid.

    Two brokers on one store would each replay it, then write over the
    other's changes (and the file store would compact the other's records
    away), so losing acknowledged messages without a word; the second one
    is refused instead.  The lock is on a file of its own because both
    stores replace their file (compaction, recovery), which would leave a
    lock on the old one.  A C{flock} lock belongs to the open file, not to
    the process, so it stays held across twistd's fork into the background
    and is gone, without leaving anything to clean up, when the process
    ends however it ends (C{kill -9} too).  Other programs that edit the
    store while the broker runs (C{mqttd groups}) do not take it.

    @raise StoreError: another process holds the lock (naming it by pid
        when it wrote one), or the lock file cannot be opened.
    """

    def __init__(self, path: str) -> None:
        self.path = path + ".lock"
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(path, f"cannot open its lock file {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self._fd, 20, 0).decode("ascii", "replace").strip()
            self.release()
            if holder == str(os.getpid()):
                by = f"this process (pid {holder}), opened twice"
            elif holder.isdigit():
                by = f"another broker (pid {holder})"
            else:
                by = "another broker"
            raise StoreError(
                path, f"in use by {by}, which holds {self.path}; one store per broker"
            ) from None
        self._owner = 0
        self.claimed()

    def claimed(self) -> None:
        """Write this process's pid into the lock file if it is not there yet (twistd forked)."""
        if self._fd is not None and self._owner != os.getpid():
            self._owner = os.getpid()
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{self._owner}\n".encode(), 0)

    def release(self) -> None:
        """Give the store up; the lock file stays, as removing it would race the next owner."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Writer(Generic[Op]):
    """
    Applies recorded operations on one thread, in batches.

    In C{sync} mode a batch is handed over at the end of the reactor turn
    that recorded its first operation, and L{flush} gives a L{Deferred}
    firing when the batch holding everything recorded so far has committed:
    group commit, since every operation recorded while one batch commits
    joins the next.  In C{batched} mode a batch is handed over
    C{flushInterval} seconds after its first operation and L{flush} returns
    L{None} while the writer keeps up.  When a batch is due while the one
    before is still committing, the writer is behind: L{flush} then returns
    a L{Deferred} firing once that commit is done (the broker holds the
    publisher's packets, and stops reading from it, until then), and the
    overdue batch is handed over at once.  So a crash loses at most the
    operations of one interval plus the batch committing, however slow the
    disk.

    @param apply: called on the writer thread with each batch; makes it
        durable (commit, fsync) before returning.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        apply: Callable[[list[Op]], None],
        *,
        sync: bool,
        flushInterval: float,
        name: str,
    ) -> None:
        self._reactor = reactor
        self._apply = apply
        self._sync = sync
        self._flushInterval = flushInterval
        # Started on first use, which is the broker's start-up: a thread started when the store
        # was built would not survive twistd's fork into the background.
        self._pool = ThreadPool(1, 1, name=name)
        self._ops: list[Op] = []
        # Waiting for the batch being recorded, and for the one committing.
        self._waiters: list[Deferred[None]] = []
        self._committing: list[Deferred[None]] | None = None
        self._timer: IDelayedCall | None = None
        self._closing = False
        # A batched batch came due while the one before was committing.
        self._overdue = False
        # Someone waits for the recorded batch to commit as soon as it can (commitNow).
        self._urgent = False

    def call(self, f: Callable[..., T], *args: object) -> Deferred[T]:
        """Run C{f(*args)} on the writer thread, after every batch handed over so far."""
        if not self._pool.started:
            self._pool.start()
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def record(self, op: Op) -> None:
        """Queue C{op} for the writer."""
        self._ops.append(op)
        # Batched, the interval runs during a commit too, so that a slow commit shows as a
        # batch overdue; in sync mode the commit's end hands the next batch over.
        if self._timer is None and (self._committing is None or not self._sync):
            self._timer = self._reactor.callLater(
                0 if self._sync else self._flushInterval, self._handOver
            )

    def flush(self, exactlyOnce: bool = False) -> Deferred[None] | None:
        """
        In C{sync} mode, or with C{exactlyOnce}, a L{Deferred} firing once
        everything recorded so far is committed, or L{None} if it already is;
        in C{batched} mode, without waiting for the batch to come due.
        Otherwise (C{batched}), L{None} while the writer keeps up, and a
        L{Deferred} firing when the commit in progress is done while it is
        behind.
        """
        if self._sync or exactlyOnce:
            return self._whenCommitted()
        if self._overdue and self._committing is not None:
            d: Deferred[None] = Deferred()
            self._committing.append(d)
            return d
        return None

    def commitNow(self) -> Deferred[None]:
        """
        A L{Deferred} firing once everything recorded so far is committed, in
        either mode: what a reader of the file from the writer thread waits
        for, so that it never reads older than the reactor thread's view.
        """
        pending = self._whenCommitted()
        if self._ops:
            if self._committing is None:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                self._handOver()
            else:
                self._urgent = True
        return pending if pending is not None else succeed(None)

    def _whenCommitted(self) -> Deferred[None] | None:
        if self._ops:
            d: Deferred[None] = Deferred()
            self._waiters.append(d)
            return d
        if self._committing is not None:
            d = Deferred()
            self._committing.append(d)
            return d
        return None

    def _handOver(self) -> None:
        self._timer = None
        if self._committing is not None:
            # Behind: handed over as soon as the commit in progress ends.
            self._overdue = bool(self._ops)
            return
        if not self._ops:
            return
        self._overdue = self._urgent = False
        ops, self._ops = self._ops, []
        self._committing, self._waiters = self._waiters, []
        self.call(self._apply, ops).addBoth(self._committed)

    def _committed(self, result: Failure | None) -> None:
        waiters, self._committing = self._committing or [], None
        if isinstance(result, Failure):
            # The operator must hear of a store that cannot write, even in
            # batched mode where no client waits for it.
            self.log.failure("mqttd's store could not write", result)
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)
        if self._ops and (self._timer is None or self._urgent or self._overdue):
            if self._timer is not None:
                self._timer.cancel()
            urgent = self._sync or self._closing or self._urgent or self._overdue
            self._timer = self._reactor.callLater(
                0 if urgent else self._flushInterval, self._handOver
            )

    def close(self, finish: Callable[[], None]) -> Deferred[None]:
        """
        Commit everything recorded, run C{finish} on the writer thread (to
        close files), then stop the thread.
        """
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending = self._whenCommitted()
        if self._ops:
            self._handOver()
        d: Deferred[None] = pending if pending is not None else succeed(None)
        d.addCallback(lambda _: self.call(finish))

        def stopped(result: object) -> object:
            self._pool.stop()
            return result

        return d.addBoth(stopped)
