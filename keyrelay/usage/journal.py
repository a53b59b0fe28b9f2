"""The usage journal: every usage record appended to a local file before its response completes, replayed after a crash.

The usage writer keeps records in memory for up to a flush interval (``usage/writer.py``); a process killed
meanwhile (SIGKILL, the OOM killer, a crash) would lose them, and their charges with them. So each record is
first appended, as one JSON line, to a segment file of this process's journal directory, and the response's
last bytes wait for that write. Group commit: the records of one event-loop tick are written together at
its end, one ``write(2)`` for all, with no ``fsync`` on the request path (the page cache survives the death
of the process; ``fsync`` runs once a second in the background, which bounds what a power cut of the machine
can lose to that second).

Layout: ``<base>/<database id>/<process dir>/<segment>.v1.jsonl`` and ``<process dir>/lock``.

- ``<database id>`` is a hash of the database URL (without its password), so that a journal is only ever
  replayed into the database its records were meant for.
- Each process owns a directory of its own and holds an exclusive ``flock`` on its ``lock`` file while it
  lives. A directory whose lock can be taken belongs to a dead process: an orphan, which a starting process
  replays into the store (idempotently, by request id: ``store/schema.py``'s unique index) and deletes.
- Segments are numbered from 1. At each flush the writer seals the current segment and opens the next; once
  every record of a sealed segment is in the store, the segment is deleted. A clean stop flushes everything
  and deletes the directory.
- An orphan may hold what a newer keyrelay wrote (a rollback after a crash): records of a newer format
  (``usage/records.py``'s ``NewerRecord``) and files of any other name. They are kept, in the directory, for a
  newer keyrelay to replay; the rest is replayed and deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

from keyrelay.usage.records import NewerRecord, UsageRecord, record_from_json, record_to_json

log = logging.getLogger("keyrelay.usage")
_SUFFIX = ".v1.jsonl"
_LOCK = "lock"
_PARTIAL = ".partial"  # a segment being rewritten (Orphan.remove)


def journal_base(database_url: str, configured: Path | None) -> Path:
    """The directory under which this database's journals live.

    ``configured`` (``KEYRELAY_USAGE_JOURNAL_DIR``) if set; else, for an SQLite file, a ``keyrelay-usage-journal``
    directory beside it; else ``~/.local/state/keyrelay/usage-journal``. The database's own subdirectory is
    added to it (see the module doc).
    """
    url = make_url(database_url)
    if configured is not None:
        base = configured
    elif url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        base = Path(str(url.database)).resolve().parent / "keyrelay-usage-journal"
    else:
        base = Path.home() / ".local" / "state" / "keyrelay" / "usage-journal"
    ident = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        ident = "sqlite:" + str(Path(str(url.database)).resolve())
    return base / hashlib.sha256(ident.encode()).hexdigest()[:16]


def _sync_and_close(descriptors: list[int]) -> None:
    for fd in descriptors:
        with contextlib.suppress(OSError):
            os.fsync(fd)
        os.close(fd)


@dataclass(slots=True)
class Orphan:
    """A dead process's journal directory, locked by this process until ``remove`` or ``release``.

    ``records``: those this version reads, to replay. ``newer``: per segment, the lines of records a newer keyrelay
    wrote; ``foreign``: every other file (a newer keyrelay's). Both are kept for a newer keyrelay (see the module doc).
    """

    path: Path
    records: list[UsageRecord]
    _lock_fd: int
    newer: dict[Path, list[bytes]] = field(default_factory=dict)
    foreign: list[Path] = field(default_factory=list)

    def remove(self) -> None:
        """Delete what was replayed (its records are in the store now) and release the lock.

        The whole directory, unless it holds a newer keyrelay's records or files: then each segment keeps only
        those records (written to a temporary file, synced, renamed over it and the directory synced, so that even
        a power cut leaves the old segment or the new one), every other file stays as it is, and the directory
        stays for a newer keyrelay to replay.

        Raises:
            OSError: A segment could not be rewritten; the lock is released, and that segment and those after it
                are as they were (replayed again at the next start, which charges nothing twice).
        """
        try:
            if not self.newer and not self.foreign:
                shutil.rmtree(self.path, ignore_errors=True)
                return
            for segment in sorted(self.path.glob(f"*{_SUFFIX}")):
                kept = self.newer.get(segment)
                if kept is None:
                    segment.unlink(missing_ok=True)
                    continue
                _rewrite(segment, b"".join(line + b"\n" for line in kept))
            log.warning(
                "usage journal %s: %d record(s) and %d file(s) of a newer keyrelay kept there for it to replay",
                self.path,
                sum(len(lines) for lines in self.newer.values()),
                len(self.foreign),
            )
        finally:
            os.close(self._lock_fd)

    def release(self) -> None:
        """Keep the directory (its replay failed) and release its lock, for another try."""
        os.close(self._lock_fd)


def _rewrite(segment: Path, data: bytes) -> None:
    """Replace ``segment``'s content with ``data`` durably: a temporary file (0600), ``fsync``, rename, directory sync.

    Raises:
        OSError: It could not be written; ``segment`` is as it was (a ``.partial`` file may be left, ignored).
    """
    partial = segment.with_name(segment.name + _PARTIAL)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, segment)
    directory = os.open(segment.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _read_segments(directory: Path) -> tuple[list[UsageRecord], dict[Path, list[bytes]], list[Path]]:
    """``(records this version reads, newer records' lines per segment, other files: a newer keyrelay's)``.

    Every file but the lock, this version's segments and their ``.partial`` leftovers counts as a newer
    keyrelay's, whatever its name: the directory is kept for it.
    """
    records: list[UsageRecord] = []
    newer: dict[Path, list[bytes]] = {}
    for segment in sorted(directory.glob(f"*{_SUFFIX}")):
        lines = segment.read_bytes().split(b"\n")
        for number, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                records.append(record_from_json(line))
            except NewerRecord:
                newer.setdefault(segment, []).append(line)
            except ValueError as exc:
                # Only a line being written when the process died can be torn, and its response never completed.
                log.warning("usage journal %s line %d skipped (%s)", segment, number, exc)
    foreign = sorted(
        p for p in directory.iterdir() if p.name != _LOCK and not p.name.endswith((_SUFFIX, _SUFFIX + _PARTIAL))
    )
    return records, newer, foreign


def orphans(base: Path) -> Iterator[Orphan]:
    """The journals of dead processes under ``base``, each locked for this process while it is handled."""
    if not base.is_dir():
        return
    for directory in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        lock = directory / _LOCK
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # its process is alive
            continue
        try:
            records, newer, foreign = _read_segments(directory)
        except OSError as exc:
            log.error("usage journal %s unreadable, left for the next start: %s", directory, exc)
            os.close(fd)
            continue
        yield Orphan(directory, records, fd, newer, foreign)


class UsageJournal:
    """This process's journal: segments of JSON lines, appended before each response completes."""

    def __init__(self, base: Path) -> None:
        """Create this process's directory under ``base`` and lock it.

        Raises:
            OSError: The directory cannot be created or written (start-up fails: records could not be kept).
        """
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        # Made and locked under a hidden name, then renamed: another process's orphan scan (which skips hidden
        # names) can never take a directory between its creation and its lock.
        making = base / f".{name}"
        making.mkdir(mode=0o700)
        self._lock_fd = os.open(making / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.path = base / name
        making.rename(self.path)
        self.segment = 0
        self._fd = -1
        self._closed = False
        self._torn = False  # the last write failed: the next one starts on a line of its own
        self._written = False  # the current segment holds a record
        self._unsynced = False
        self._failing = False
        self._sealed: list[int] = []  # descriptors of sealed segments, to sync and close
        self._buffer: list[bytes] = []  # lines appended in this tick, written at its end (group commit)
        self._batch: asyncio.Future[None] | None = None  # done once they are
        self._open_next()

    def _open_next(self) -> None:
        """Open the next segment and make it current (the number and descriptor change together, or neither).

        Raises:
            OSError: It cannot be opened; the current segment stays current.
        """
        path = self.path / f"{self.segment + 1:012d}{_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.segment += 1
        self._written = False

    def append(self, record: UsageRecord) -> int:
        """Queue one record for this tick's write; returns the number of the segment that will hold it.

        Group commit: the records appended in one event-loop tick are written together, with one ``write(2)``, at
        the end of the tick (``written`` waits for it). Outside an event loop the record is written at once.
        """
        if self._closed:
            log.error("usage record %s arrived after the journal was closed: not journaled", record.request_id)
            return self.segment
        self._buffer.append(record_to_json(record, newline=True))
        if self._batch is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._write_buffer()
                return self.segment
            self._batch = loop.create_future()
            loop.call_soon(self._write_buffer)
        return self.segment

    def written(self) -> asyncio.Future[None] | None:
        """A future done once the records appended so far are written (None: nothing is waiting to be)."""
        return self._batch

    def _write_buffer(self) -> None:
        """Write the queued lines with one ``write(2)``, then release whoever waits for them.

        A failed write (a full disk) is logged, once until writes succeed again, and not raised: the records still
        go to the store from memory; only a crash before then would lose them.
        """
        lines, self._buffer = self._buffer, []
        batch, self._batch = self._batch, None
        try:
            if lines and not self._closed:
                data = lines[0] if len(lines) == 1 else b"".join(lines)
                if self._torn:  # after a write cut short, end its torn line first: replay skips it, not ours
                    data = b"\n" + data
                self._torn = True
                while data:  # a regular file takes it whole unless the disk is full (then OSError)
                    data = data[os.write(self._fd, data) :]
                self._torn = False
                self._written = self._unsynced = True
                if self._failing:
                    self._failing = False
                    log.info("usage journal writable again")
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.error("usage journal write failed (records are kept in memory only): %s", exc)
        finally:
            if batch is not None and not batch.done():
                batch.set_result(None)

    def seal(self) -> None:
        """Close the current segment, if it holds records, and open the next one for new records.

        The sealed segment's descriptor is synced and closed by the next ``sync``, off the event loop.
        """
        self._write_buffer()  # the lines queued this tick belong to the segment they were counted in
        if not self._written or self._closed:
            return
        sealed = self._fd
        try:
            self._open_next()
        except OSError as exc:  # no descriptor or no space: go on writing to the current segment
            log.error("usage journal: cannot open a new segment, the current one goes on: %s", exc)
            return
        self._sealed.append(sealed)
        self._unsynced = False

    def release_before(self, segment: int) -> None:
        """Delete the sealed segments numbered below ``segment``: every record in them is in the store."""
        for path in self.path.glob(f"*{_SUFFIX}"):
            number = int(path.name.split(".", 1)[0])
            if number < min(segment, self.segment):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    async def sync(self) -> None:
        """``fsync`` what was written since the last call (run once a second), in a thread: never on the event loop.

        The current segment is synced through a duplicate of its descriptor, so that a ``seal`` meanwhile cannot
        close it under the thread; sealed segments are synced, then closed.
        """
        if self._closed:
            return
        descriptors, self._sealed = self._sealed, []
        if self._unsynced:
            self._unsynced = False
            descriptors.append(os.dup(self._fd))
        if descriptors:
            await asyncio.to_thread(_sync_and_close, descriptors)

    def close(self, *, empty: bool) -> None:
        """Close the journal; ``empty``: every record is in the store, so the directory is deleted."""
        self._write_buffer()
        self._closed = True
        _sync_and_close([*self._sealed, self._fd])
        self._sealed = []
        if empty:
            shutil.rmtree(self.path, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()  # the database's directory, when no other process has one there
        os.close(self._lock_fd)
