"""Turning image files into store rows fast: read, decode, hash and PNG-encode in a pool of worker
processes, a bounded number of chunks in flight (memory stays flat), results back in order.

A plain 8-bit RGB PNG takes `images.plain_png` (its own IDAT bytes are stored, no re-encoding);
anything else goes through the upload decoder (`decode_file`, `to_rgb`, `to_png`, `pixel_hash`).
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from PIL import Image as PILImage
from PIL import UnidentifiedImageError

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


@dataclass(frozen=True, slots=True)
class PreparedChunk:
    """A chunk of prepared files in the few objects a worker sends back: the PNGs end to end, and
    per file where its PNG ends, its size (0 x 0: unreadable) and its hash (64 hex digits, or 64
    spaces). Pickling 250 Prepared tuples and unpickling them in the importing process cost ~6 us a
    file; this costs a fraction of that. Iterating gives the Prepared tuples back, in order."""

    blob: bytes
    ends: list[int]
    widths: list[int]
    heights: list[int]
    hashes: str

    def __iter__(self) -> Iterator[Prepared]:
        start = 0
        for i, end in enumerate(self.ends):
            width = self.widths[i]
            if width:
                yield Prepared(self.blob[start:end], width, self.heights[i], self.hashes[64 * i:64 * i + 64])
            else:
                yield Prepared(None)
            start = end

    def __len__(self) -> int:
        return len(self.ends)


_NO_HASH = " " * 64


def prepare_files(paths: list[str]) -> PreparedChunk:
    """One chunk of files (what a worker process runs)."""
    pngs, ends, widths, heights, hashes, end = [], [], [], [], [], 0
    for path in paths:
        png, width, height, content_hash = prepare_file(path)
        if png is None:
            width = height = 0
            content_hash = _NO_HASH
        else:
            pngs.append(png)
            end += len(png)
        ends.append(end)
        widths.append(width)
        heights.append(height)
        hashes.append(content_hash)
    return PreparedChunk(b"".join(pngs), ends, widths, heights, "".join(hashes))


def default_workers() -> int:
    """Decoder processes: one per core (the importing process writes to the store meanwhile)."""
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


def make_executor(workers: int) -> Executor:
    """`workers` decoder processes (0: InlineExecutor). Forked from this process when it runs a single
    thread (the CLI); otherwise (the app's threaded server) started by a fork server that preloads
    this module, since forking a process with other threads can deadlock the child."""
    if workers <= 0:
        return InlineExecutor()
    methods = multiprocessing.get_all_start_methods()
    if threading.active_count() == 1 and "fork" in methods:
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=die_with_parent, initargs=(os.getpid(),))
    if "forkserver" not in methods:
        return ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),))
    context = multiprocessing.get_context("forkserver")  # the parent: the fork server, which ends with us
    context.set_forkserver_preload([__name__])
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=die_with_parent,
                               initargs=(None,))


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
