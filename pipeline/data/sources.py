"""Image sources (bundled examples, a folder per class, CIFAR-10) and the idempotent, resumable import.

`import_images(engine, source=ImportSource.bundled, n_per_class=10)` adds a balanced, seeded
sample (`n_per_class=None`: every image); re-running it adds nothing, and unreadable files are
counted instead of crashing. Files are read, decoded and written in batches by worker processes
(pipeline/data/ingest.py).
"""
from __future__ import annotations

import contextlib
import enum
import gc
import os
import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple

from PIL import Image as PILImage
from sqlalchemy.engine import Engine

from db.catalog import stored_source_keys, stored_source_keys_under
from db.engine import bulk_writes, session_scope, sqlite_file
from db.models import SourceKind
from db.tally import fold
from pipeline.data.images import IMAGE_SUFFIXES, UploadError
from pipeline.data.ingest import (
    ADDED,
    UNREADABLE,
    UNREADABLE_FILE,
    Batch,
    Prepared,
    StopRequest,
    default_workers,
    make_executor,
    ordered_map,
    prepare_image,
    stop_between_batches,
    write_batch,
    write_batch_to,
)

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "assets" / "cifar10"


class Split(str, enum.Enum):
    """A CIFAR-10 split."""

    train = "train"
    test = "test"


class ImportSource(str, enum.Enum):
    """The sources `import` can read (a subset of SourceKind: uploads come from the app)."""

    bundled = "bundled"
    folder = "folder"
    cifar10 = "cifar10"

    @property
    def kind(self) -> SourceKind:
        return SourceKind(self.value)


class SourceError(RuntimeError):
    """A source that cannot be read at all (missing folder, CIFAR-10 not downloaded)."""


class Candidate(NamedTuple):  # a tuple: a million of them are made in a folder import
    """One image a source can provide, not yet decoded: a file (decoded in a worker process) or
    a loader run in this process (CIFAR-10's pickled arrays, a refused file)."""

    key: str  # source_key stored on the image, e.g. "bundled:cat/cat_0001.png", a file path
    label: str
    path: str | None = None
    load: Callable[[], PILImage.Image] | None = None


@dataclass
class ImportSummary:
    """What an import did: new images, ones already in the store, unreadable files."""

    added: int = 0
    existing: int = 0
    corrupt: int = 0
    per_class: dict[str, int] = field(default_factory=dict)  # added per class
    corrupt_keys: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"added": self.added, "existing": self.existing, "corrupt": self.corrupt,
                "per_class": dict(self.per_class), "corrupt_keys": list(self.corrupt_keys)}


LAYOUT = "<folder>/<class>/<image>, e.g. <folder>/cat/0001.png and <folder>/dog/0002.jpg"


def _refuse(message: str) -> Callable[[], PILImage.Image]:
    def load() -> PILImage.Image:
        raise UploadError(message)
    return load


def _image_files(folder: str, parts: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str, bool]]:
    """(path parts under `folder`, path, is a symlink) of the image files under `folder` (os.scandir;
    symlinked sub-folders are not entered, as rglob). Nothing but strings is kept: a million-file import
    lists ~4x faster than with the DirEntry objects kept for sorting."""
    with os.scandir(folder) as entries:
        for e in entries:
            name = e.name
            if e.is_dir() and not e.is_symlink():
                yield from _image_files(e.path, (*parts, name))
            elif _suffix(name) in IMAGE_SUFFIXES and e.is_file():
                yield (*parts, name), e.path, e.is_symlink()


def _suffix(name: str) -> str:
    """os.path.splitext(name)[1].lower() for a file name, in a third of the time."""
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 and name[:dot].strip(".") else ""


def _first_name(found: tuple[tuple[str, ...], str, bool]) -> str:
    return found[0][0]


def class_candidates(root: Path, class_dir: Path, *, prefix: str) -> list[Candidate]:
    """The images of one class folder in path order (that of sorted(rglob)); a file (or symlink)
    that resolves outside `root` is never read: its candidate refuses it (counted as unreadable)."""
    real_root = root.resolve()
    check_all = class_dir.is_symlink()
    label = class_dir.name
    base = f"{prefix}{label}/"
    out = []
    found = list(_image_files(str(class_dir)))
    # path order; a flat folder's names sort as plain strings (faster than as one-element tuples)
    found.sort(key=itemgetter(0) if any(len(f[0]) > 1 for f in found) else _first_name)
    for parts, path, link in found:
        key = base + (parts[0] if len(parts) == 1 else "/".join(parts))
        if (check_all or link) and not Path(path).resolve().is_relative_to(real_root):
            out.append(Candidate(key, label, load=_refuse(f"{parts[-1]} points outside the import folder")))
        else:
            out.append(Candidate(key, label, path))
    return out


class SourceClass(NamedTuple):
    """One class of a source: `listing()` makes its candidates (in their turn: memory holds one
    class's at a time), `count()` says how many there are without making them."""

    label: str
    listing: Callable[[], list[Candidate]]
    count: Callable[[], int]


def _listed(label: str, items: list[Candidate]) -> SourceClass:
    return SourceClass(label, lambda: items, lambda: len(items))


def folder_classes(root: Path, *, prefix: str) -> list[SourceClass]:
    """One SourceClass per sub-folder of `root`, by name.

    A folder without class sub-folders holding images raises SourceError naming the layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"image folder {root} does not exist (expected the layout {LAYOUT})")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not any(next(_image_files(str(d)), None) for d in class_dirs):
        loose = sum(1 for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        hint = f"; it holds {loose} image(s) directly, move them into class sub-folders" if loose else ""
        raise SourceError(f"image folder {root} has no class sub-folders with images{hint}. "
                          f"Expected the layout {LAYOUT} (the sub-folder's name is the class).")
    return [SourceClass(d.name, lambda d=d: class_candidates(root, d, prefix=prefix),
                        lambda d=d: sum(1 for _ in _image_files(str(d)))) for d in class_dirs]


def cifar10_candidates(root: Path, *, split: Split, download: bool) -> Iterator[Candidate]:
    """CIFAR-10 through torchvision (an existing copy in the standard layout, or a download)."""
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(root=str(root), train=split == Split.train, download=download)
    except (RuntimeError, OSError) as exc:  # "Dataset not found or corrupted", or no network
        raise SourceError(
            f"CIFAR-10 is not available under {root} ({exc}). Point --cifar-root at a folder "
            "holding `cifar-10-batches-py`, or pass --download when online."
        ) from exc
    for i, target in enumerate(ds.targets):
        yield Candidate(f"cifar10:{split.value}:{i}", ds.classes[target], load=lambda i=i: ds[i][0])


def candidates_for(source: ImportSource, *, path: Path | None = None, split: Split = Split.test,
                   download: bool = False) -> Iterator[Candidate]:
    """The candidates of one source (the split matters for CIFAR-10 only)."""
    for source_class in classes_for(source, path=path, split=split, download=download):
        yield from source_class.listing()


def classes_for(source: ImportSource, *, path: Path | None = None, split: Split = Split.test,
                download: bool = False) -> list[SourceClass]:
    """The classes of one source, sorted by name."""
    source, split = ImportSource(source), Split(split)
    if source == ImportSource.bundled:
        return folder_classes(BUNDLED_DIR, prefix="bundled:")
    if source == ImportSource.folder:
        if path is None:
            raise SourceError("the folder source needs --path <folder with one sub-folder per class>")
        return folder_classes(Path(path), prefix=f"{Path(path).resolve().as_posix()}/")
    if path is None:
        raise SourceError("the cifar10 source needs --cifar-root <folder>")
    by_class: dict[str, list[Candidate]] = {}
    for c in cifar10_candidates(Path(path), split=split, download=download):
        by_class.setdefault(c.label, []).append(c)
    return [_listed(label, items) for label, items in sorted(by_class.items())]


def sample_order(items: list[Candidate], *, label: str, seed: int) -> list[Candidate]:
    """One class's candidates shuffled with `seed` (the same seed, the same sample)."""
    items = list(items)
    random.Random(f"{seed}:{label}").shuffle(items)
    return items


def balanced_order(candidates: Iterator[Candidate], *, seed: int) -> dict[str, list[Candidate]]:
    """Candidates grouped by class, each class shuffled with `seed`."""
    by_class: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_class.setdefault(c.label, []).append(c)
    return {label: sample_order(items, label=label, seed=seed) for label, items in sorted(by_class.items())}


BATCH = 20000
"""Images per transaction in an import (a killed import loses at most this many per writer process,
about a second's work). At a million images, 20,000 wrote 8.4 GB against 2,000's 14.4 GB: a batch's new
content hashes land all over their index, and each batch writes every index page it touched again."""
PARALLEL_FROM = 2000
"""Imports of fewer images are written by this process (starting writer processes costs more)."""
IN_FLIGHT = 3
"""Batches out per writer process (decoding, waiting for the turn, or queued): fewer left a writer idle
between two batches (a million: 16,800 images/s with one more than the writers, 19,400-21,600 with
three per writer); each is only paths, so memory stays flat."""
MIN_BATCH = 250
"""The smallest batch a parallel import splits its images into (so that every writer process has work)."""


def import_images(engine: Engine, *, source: ImportSource, n_per_class: int | None, seed: int = 0,
                  split: Split = Split.test, path: Path | None = None, download: bool = False,
                  on_progress: Callable[[int, int], None] | None = None, workers: int | None = None,
                  batch_size: int = BATCH) -> ImportSummary:
    """Add up to `n_per_class` images of each class (a seeded sample), or every image in path order
    when `n_per_class` is None; corrupt files are skipped (and counted).

    A corrupt file is replaced by the next candidate of its class, so the sample stays balanced.
    Batches of at most `batch_size` images are read, decoded and written, one transaction each, by
    `workers` processes (default: one per core; 0: this process, as for small imports), in the order
    a single process would write them: a killed import keeps its finished batches, and a re-run skips
    the files whose path is already stored without reading them. `on_progress(done, total)` counts
    images taken (added or already present).
    """
    if n_per_class is not None and n_per_class < 1:
        raise SourceError("n_per_class must be >= 1 (or None: every image)")
    source = ImportSource(source)
    classes = classes_for(source, path=path, split=split, download=download)
    sizes = [c.count() for c in classes]  # the progress total; each class is listed in its turn
    total = sum(sizes) if n_per_class is None else sum(min(n_per_class, n) for n in sizes)
    if workers is None:
        workers = default_workers() if total >= PARALLEL_FROM else 0
    url = engine.url.render_as_string(hide_password=False)
    if workers and engine.dialect.name == "sqlite" and sqlite_file(url) is None:
        workers = 0  # an in-memory store: other processes cannot open it
    if workers:  # enough batches that every writer has work, each at most batch_size
        batch_size = min(batch_size, max(MIN_BATCH, -(-total // (2 * workers))))
    with stop_between_batches() as stop, _heap_frozen(), \
            ThreadPoolExecutor(1, thread_name_prefix="import-list") as lister, contextlib.ExitStack() as stack:
        run = _Run(engine, source=source, total=total, on_progress=on_progress, batch_size=batch_size, stop=stop)
        executor, turns = make_executor(workers, url=url)
        stack.enter_context(executor)
        if turns is None:  # written here, in order, through one bulk connection
            write = partial(write_batch_to, stack.enter_context(bulk_writes(engine)), None)
        else:  # the writers are forked at the first task: before the listing thread starts
            executor.submit(os.getpid).result()
            write = write_batch
        listings = _listings(classes, lister)
        in_flight = IN_FLIGHT * workers or 1  # written here: one at a time (a task runs when it is submitted)
        try:
            if n_per_class is None:  # one stream of batches across the classes: no writer waits at a class's end
                batches = (batch for label, items in listings for batch in run.batches(label, items))
                run.write_all(executor, write, batches, in_flight=in_flight)
            else:
                for label, items in listings:
                    run.write_sample(executor, write, label, sample_order(items, label=label, seed=seed),
                                     quota=n_per_class, in_flight=in_flight)
        except BaseException:
            if turns is not None:  # the batches still waiting for their turn give up
                turns.cancel()
                executor.shutdown(cancel_futures=True)
            raise
    run.progress()
    if run.summary.added:  # PostgreSQL: one row per key again, so the first page after a big import reads few
        with session_scope(engine) as session:
            fold(session)
    return run.summary


def _listings(classes: list[SourceClass], lister: ThreadPoolExecutor) -> Iterator[tuple[str, list[Candidate]]]:
    """(label, candidates) of each class in turn; the next class is listed while this one is imported."""
    upcoming = lister.submit(classes[0].listing) if classes else None
    for i, source_class in enumerate(classes):
        items = upcoming.result()
        if i + 1 < len(classes):
            upcoming = lister.submit(classes[i + 1].listing)
        yield source_class.label, items


@contextmanager
def _heap_frozen() -> Iterator[None]:
    """Leave the objects that exist before the import (the modules, an app's state) out of the cyclic
    garbage collector's passes while it runs: the import's millions of tuples set off full collections,
    and each walked that whole heap again (~0.25 s each with the CLI's modules). Given back after."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class _Run:
    """One import's batches and its summary: candidates already stored (by path) are counted here,
    the rest go out in batches of one class, and each batch's outcome comes back in order."""

    def __init__(self, engine: Engine, *, source: ImportSource, total: int, batch_size: int,
                 on_progress: Callable[[int, int], None] | None, stop: StopRequest):
        self.engine, self.source, self.total, self.batch_size = engine, source, total, batch_size
        self.on_progress, self.stop = on_progress, stop
        self.summary, self.taken, self.seq = ImportSummary(), 0, 0

    def batches(self, label: str, items: list[Candidate]) -> Iterator[tuple[Batch, int]]:
        """(batch, how many candidates before it were already stored) over `items` in order."""
        self.summary.per_class.setdefault(label, 0)
        stored = None  # a large class: the keys already stored under its common prefix, in one query
        if len(items) > 4 * MIN_BATCH:
            with session_scope(self.engine) as session:
                stored = stored_source_keys_under(session, prefix=os.path.commonprefix([c.key for c in items]))
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            if stored is not None:
                known = {c.key for c in chunk if c.key in stored}
            else:
                with session_scope(self.engine) as session:
                    known = stored_source_keys(session, keys=[c.key for c in chunk])
            new = [c for c in chunk if c.key not in known]
            if new:
                yield self._batch(label, new), len(chunk) - len(new)
            else:
                self._count_known(len(chunk))

    def _batch(self, label: str, items: list[Candidate]) -> Batch:
        self.seq += 1
        preloaded = [_load_here(c) for c in items if c.path is None]
        return Batch(self.seq - 1, self.source.kind, label, [c.key for c in items], [c.path for c in items],
                     preloaded)

    def write_all(self, executor, write, batches: Iterator[tuple[Batch, int]], *, in_flight: int) -> int:
        """Write `batches` (at most `in_flight` out at once); returns the images taken (added, or
        already stored by path or by picture)."""
        before = self.taken
        self.stop.check()
        for (batch, known), codes in ordered_map(executor, write, batches, payload=itemgetter(0),
                                                 in_flight=in_flight):
            self._count_known(known)
            for key, code in zip(batch.keys, codes, strict=True):
                if code == UNREADABLE_FILE:
                    self.summary.corrupt += 1
                    self.summary.corrupt_keys.append(key)
                    continue
                added = code == ADDED
                self.summary.added += added
                self.summary.existing += not added
                self.summary.per_class[batch.label] += added
                self.taken += 1
            self.progress()
            self.stop.check()  # Ctrl-C: the batches still out give up at their turn (Turns.cancel)
        return self.taken - before

    def write_sample(self, executor, write, label: str, items: list[Candidate], *, quota: int,
                     in_flight: int) -> None:
        """Take `items` in order until `quota` are taken: each round writes as many as are still
        missing, and an unreadable one is replaced by the next in the following round."""
        start, taken = 0, 0
        self.summary.per_class.setdefault(label, 0)
        while taken < quota and start < len(items):
            need = quota - taken
            taken += self.write_all(executor, write, self.batches(label, items[start:start + need]),
                                    in_flight=in_flight)
            start += need

    def _count_known(self, n: int) -> None:
        self.summary.existing += n
        self.taken += n

    def progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(min(self.taken, self.total), self.total)


def _load_here(cand: Candidate) -> Prepared:
    try:
        return prepare_image(cand.load())
    except UNREADABLE:
        return Prepared(None)
