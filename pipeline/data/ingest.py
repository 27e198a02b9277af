"""Turning image files into store rows fast: each worker process reads, decodes and hashes a batch of
files and writes it to the store itself, through its own bulk connection; a bounded number of batches
are in flight (memory stays flat) and they commit in the order they were made (`Turns`), so the ids are
those a one-by-one import gives.

A plain 8-bit RGB PNG takes `images.plain_png` (its own IDAT bytes are stored, no re-encoding);
anything else goes through the upload decoder (`decode_file`, `to_rgb`, `to_png`, `pixel_hash`).
"""
from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import NamedTuple, TypeVar

from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from sqlalchemy.engine import Connection

from db.catalog import NewImage, add_images
from db.engine import bulk_writes, make_engine, session_scope
from db.models import SourceKind
from pipeline.data.images import MAX_UPLOAD_BYTES, decode_file, pixel_hash, plain_png, to_png

UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, PILImage.DecompressionBombError)
"""What an unreadable file raises (UploadError is a ValueError): it is counted, never fatal."""

T = TypeVar("T")


class Prepared(NamedTuple):
    """One decoded image, ready to insert; `png` is None when the file could not be read."""

    png: bytes | None
    width: int = 0
    height: int = 0
    content_hash: str = ""


def prepare_image(image: PILImage.Image) -> Prepared:
    """The stored form of an already decoded RGB image (sources that are not files, e.g. CIFAR-10)."""
    return Prepared(to_png(image), image.width, image.height, pixel_hash(image))


READ_SIZE = 1 << 16
"""First read of a file: a small image in one read. (A single read of MAX_UPLOAD_BYTES + 1 would
allocate and give back 20 MiB per file, which cost more than decoding a 32x32 PNG.)"""


def read_file(path: str) -> bytes:
    """The file's bytes, at most MAX_UPLOAD_BYTES + 1 of them (enough to see that it is too large)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, READ_SIZE)
        if len(data) == READ_SIZE:
            data += os.read(fd, MAX_UPLOAD_BYTES + 1 - READ_SIZE)
        return data
    finally:
        os.close(fd)


def prepare_file(path: str) -> Prepared:
    """Read and decode one file; an unreadable one gives Prepared(None)."""
    try:
        data = read_file(path)
        if (fast := plain_png(data)) is not None:
            return Prepared(*fast)
        image = decode_file(path)  # the upload decoder: names what is wrong, bomb checks, 16-bit
        return prepare_image(image)
    except UNREADABLE:
        return Prepared(None)


def default_workers() -> int:
    """Writer processes: one per core (each decodes its batch while another writes)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class InlineExecutor(Executor):
    """Runs each task at once in this process (workers=0: tests, debugging, one-core machines)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the caller through the future
            future.set_exception(exc)
        return future


def make_executor(workers: int, *, url: str) -> tuple[Executor, Turns | None]:
    """`workers` writer processes for the store at `url` and the turns their batches commit by
    (0: InlineExecutor, no turns). Forked from this process when it runs a single thread (the CLI);
    otherwise (the app's threaded server) started by a fork server that preloads this module, since
    forking a process with other threads can deadlock the child."""
    if workers <= 0:
        return InlineExecutor(), None
    methods = multiprocessing.get_all_start_methods()
    if threading.active_count() == 1 and "fork" in methods:
        context, parent = multiprocessing.get_context("fork"), os.getpid()
    elif "forkserver" in methods:
        context, parent = multiprocessing.get_context("forkserver"), None  # the parent: the fork server
        context.set_forkserver_preload([__name__])
    else:
        context, parent = multiprocessing.get_context(), os.getpid()
    turns = Turns(context)
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_writer,
                                   initargs=(parent, url, turns))
    return executor, turns


def die_with_parent(parent: int | None) -> None:
    """A decoder process ends when the process that started it (pid `parent`) dies, on Linux: an
    import killed with SIGKILL would otherwise leave its decoders waiting for work forever (each
    sibling holds the task queue open, so none sees it close). Elsewhere nothing is done."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:  # it died before prctl: no signal will come
        os._exit(1)


PR_SET_PDEATHSIG = 1


def ordered_map(executor: Executor, fn: Callable, items: Iterable[T], *, payload: Callable[[T], object],
                in_flight: int) -> Iterator[tuple[T, object]]:
    """(item, fn(payload(item))) in the order of `items`, with at most `in_flight` items submitted
    and not yet consumed: `items` is read lazily, so a slow consumer never piles up results."""
    pending: deque[tuple[T, Future]] = deque()
    iterator = iter(items)
    exhausted = False
    while True:
        while not exhausted and len(pending) < in_flight:
            try:
                item = next(iterator)
            except StopIteration:
                exhausted = True
                break
            pending.append((item, executor.submit(fn, payload(item))))
        if not pending:
            return
        item, future = pending.popleft()
        yield item, future.result()


class StopRequest:
    """Whether Ctrl-C asked the import to stop; `check()` raises KeyboardInterrupt once it has."""

    def __init__(self) -> None:
        self.requested = False

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


@contextmanager
def stop_between_batches() -> Iterator[StopRequest]:
    """While an import runs in the main thread, the first Ctrl-C only asks it to stop (the import checks
    the request between batches and raises KeyboardInterrupt there); a second one interrupts at once.

    Python raises KeyboardInterrupt wherever the main thread happens to be, and some places swallow it
    or are left half done: at the fork of the writer processes it surfaced inside logging's at-fork hook,
    was printed as "Exception ignored" and lost (the import went on to the end, logging's lock left held),
    and inside the process pool's or a future's bookkeeping it can leave the pool waiting for ever. A
    Ctrl-C that comes after the last check still ends the import as interrupted. Elsewhere (a thread of
    the app, or a caller with its own SIGINT handler) nothing changes."""
    stop = StopRequest()
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield stop
        return

    def request(signum, frame) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True

    previous = signal.signal(signal.SIGINT, request)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
    stop.check()


class BatchCancelled(RuntimeError):
    """A batch not written because one before it failed (or the import was stopped)."""


class Turns:
    """The order batches commit in, shared by the writer processes: batch `seq` commits after batch
    `seq - 1` has, whichever process finished decoding first; -1 once a batch has failed (the ones
    after it are not written, as when one process wrote them all)."""

    def __init__(self, context):
        self.next = context.RawValue("q", 0)
        self.cond = context.Condition()

    def wait(self, seq: int) -> None:
        with self.cond:
            while self.next.value != seq:
                if self.next.value < 0:
                    raise BatchCancelled(f"batch {seq} not written: an earlier batch failed or the import stopped")
                self.cond.wait(0.5)

    def done(self, seq: int) -> None:
        with self.cond:
            if self.next.value >= 0:  # a cancel stays: the batches it dropped leave gaps no turn can cross
                self.next.value = seq + 1
            self.cond.notify_all()

    def cancel(self) -> None:
        with self.cond:
            self.next.value = -1
            self.cond.notify_all()


ADDED, ALREADY_STORED, UNREADABLE_FILE = 1, 2, 3
"""What `write_batch` says of each image: added, its picture already stored, the file unreadable."""


class Batch(NamedTuple):
    """One transaction's worth of images of one class: files to read (`paths`), or images prepared in
    the importing process (`preloaded`, in order, for the None paths: CIFAR-10's arrays, refusals)."""

    seq: int
    source_kind: SourceKind
    label: str
    keys: list[str]
    paths: list[str | None]
    preloaded: list[Prepared]


_WRITER: dict = {}
"""In a writer process: the store's URL, the shared Turns and, once opened, the bulk connection."""


def _start_writer(parent: int | None, url: str, turns: Turns) -> None:
    die_with_parent(parent)
    # Ctrl-C reaches the whole process group; only the importing process acts on it (Turns.cancel): a writer
    # interrupted inside the shared condition's wait would leave it unbalanced, and every later notify
    # (the cancel itself) would block for ever. A writer ends at its batch's turn (BatchCancelled).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WRITER.update(url=url, turns=turns)


def write_batch(batch: Batch) -> bytes:
    """What a writer process runs: `write_batch_to` through its own bulk connection, held while it lives
    (its SQLite pragmas die with it)."""
    if "conn" not in _WRITER:
        stack = contextlib.ExitStack()
        _WRITER.update(conn=stack.enter_context(bulk_writes(make_engine(_WRITER["url"]))), stack=stack)
    return write_batch_to(_WRITER["conn"], _WRITER["turns"], batch)


def write_batch_to(conn: Connection, turns: Turns | None, batch: Batch) -> bytes:
    """Read and decode the batch's files, then (its turn come) add them in one transaction; per image
    ADDED, ALREADY_STORED (the same picture is stored or came earlier) or UNREADABLE_FILE.

    On SQLite the turn is handed on as soon as this transaction holds the store's write lock (BEGIN
    IMMEDIATE): the next batch then queues on that lock and is written the moment this one commits,
    while this process copies the WAL into the database if the commit called for it (a checkpoint
    blocks no writer). Elsewhere the turn passes after the commit."""
    passed = False
    try:
        codes = bytearray(len(batch.keys))
        rows, at = [], []
        preloaded = iter(batch.preloaded)
        for i, (key, path) in enumerate(zip(batch.keys, batch.paths, strict=True)):
            image = prepare_file(path) if path is not None else next(preloaded)
            if image.png is None:
                codes[i] = UNREADABLE_FILE
                continue
            rows.append(NewImage(key, batch.label, image.png, image.content_hash, image.width, image.height))
            at.append(i)
        if turns is not None:
            turns.wait(batch.seq)
        with session_scope(conn) as session:
            session.connection()  # begins the transaction (SQLite: takes the write lock)
            if turns is not None and conn.dialect.name == "sqlite":
                turns.done(batch.seq)
                passed = True
            created = add_images(session, source_kind=batch.source_kind, images=rows) if rows else []
    except Exception as exc:
        if turns is not None and not isinstance(exc, BatchCancelled):
            if not passed:  # the batches before this one are still written (after it, at most the next)
                with contextlib.suppress(BatchCancelled):
                    turns.wait(batch.seq)
            turns.cancel()
        raise
    except BaseException:  # stopped (Ctrl-C): nothing more is written
        if turns is not None:
            turns.cancel()
        raise
    if turns is not None and not passed:
        turns.done(batch.seq)
    for i, new in zip(at, created, strict=True):
        codes[i] = ADDED if new else ALREADY_STORED
    return bytes(codes)
