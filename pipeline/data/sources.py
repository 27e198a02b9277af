"""Image sources (bundled examples, a folder per class, CIFAR-10) and the idempotent, resumable import.

`import_images(engine, source=ImportSource.bundled, n_per_class=10)` adds a balanced, seeded
sample (`n_per_class=None`: every image); re-running it adds nothing, and unreadable files are
counted instead of crashing. Files are decoded in worker processes (pipeline/data/ingest.py) and
written in batches.
"""
from __future__ import annotations

import enum
import gc
import os
import random
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple

from PIL import Image as PILImage
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from db.catalog import NewImage, add_images, stored_source_keys, stored_source_keys_under
from db.engine import bulk_writes, session_scope
from db.models import SourceKind
from db.tally import fold
from pipeline.data.images import IMAGE_SUFFIXES, UploadError
from pipeline.data.ingest import (
    UNREADABLE,
    Prepared,
    default_workers,
    make_executor,
    ordered_map,
    prepare_files,
    prepare_image,
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
"""Images per transaction in an import (a killed import loses at most this many, about a second's work).
At a million images, 20,000 wrote 8.4 GB against 2,000's 14.4 GB: a batch's new content hashes land all
over their index, and each batch writes every index page it touched again."""
CHUNK = 250
"""Files per task handed to a decoder process."""
MAX_QUEUED = 8 * CHUNK
"""At most this many more files decoded ahead while a batch is written."""
PARALLEL_FROM = 2000
"""Imports of fewer images decode in this process (starting worker processes costs more)."""


def import_images(engine: Engine, *, source: ImportSource, n_per_class: int | None, seed: int = 0,
                  split: Split = Split.test, path: Path | None = None, download: bool = False,
                  on_progress: Callable[[int, int], None] | None = None, workers: int | None = None,
                  batch_size: int = BATCH) -> ImportSummary:
    """Add up to `n_per_class` images of each class (a seeded sample), or every image in path order
    when `n_per_class` is None; corrupt files are skipped (and counted).

    A corrupt file is replaced by the next candidate of its class, so the sample stays balanced.
    Files are decoded by `workers` processes (default: one per core; 0: in this process, as for
    small imports) and written `batch_size` at a time, one transaction each: a killed import keeps
    its finished batches, and a re-run skips the files whose path is already stored without
    reading them. `on_progress(done, total)` counts images taken (added or already present).
    """
    if n_per_class is not None and n_per_class < 1:
        raise SourceError("n_per_class must be >= 1 (or None: every image)")
    source = ImportSource(source)
    classes = classes_for(source, path=path, split=split, download=download)
    sizes = [c.count() for c in classes]  # the progress total; each class is listed in its turn
    total = sum(sizes) if n_per_class is None else sum(min(n_per_class, n) for n in sizes)
    if workers is None:
        workers = default_workers() if total >= PARALLEL_FROM else 0
    # enough chunks queued that the decoders keep working while a batch is handed over (bounded: flat memory)
    in_flight = 2 * max(workers, 1) + 2 + min(batch_size, MAX_QUEUED) // CHUNK
    with _heap_frozen(), make_executor(workers) as executor, bulk_writes(engine) as conn, \
            ThreadPoolExecutor(1, thread_name_prefix="import-list") as lister, \
            ThreadPoolExecutor(1, thread_name_prefix="import-write") as write_thread:
        writer = _Writer(conn, write_thread, source=source, batch_size=batch_size, total=total,
                         on_progress=on_progress)
        if workers > 0:  # the decoders are forked at the first task: before the listing thread starts
            executor.submit(os.getpid).result()
        upcoming = lister.submit(classes[0].listing) if classes else None
        for i, (label, _listing, _count) in enumerate(classes):
            items = upcoming.result()
            if i + 1 < len(classes):  # the next class is listed while this one is imported
                upcoming = lister.submit(classes[i + 1].listing)
            if n_per_class is not None:
                items = sample_order(items, label=label, seed=seed)
            _import_class(engine, executor, writer, label=label, items=items, quota=n_per_class,
                          in_flight=in_flight)
        writer.close()
    if writer.summary.added:  # PostgreSQL: one row per key again, so the first page after a big import reads few
        with session_scope(engine) as session:
            fold(session)
    return writer.summary


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


class _Writer:
    """Collects prepared images and writes them `batch_size` at a time, one transaction each, on its own
    thread through the import's one connection (`conn`): SQLite works without the GIL, so the next batch
    is gathered while one is written (and while a checkpoint waits for the disk). At most one batch is
    being written and one gathered: memory stays flat."""

    def __init__(self, conn: Connection, thread: ThreadPoolExecutor, *, source: ImportSource, batch_size: int,
                 total: int, on_progress: Callable[[int, int], None] | None):
        self.conn, self.thread, self.source, self.batch_size = conn, thread, source, batch_size
        self.total, self.on_progress = total, on_progress
        self.summary, self.pending, self.taken = ImportSummary(), [], 0
        self.writing: tuple[Future, list[NewImage]] | None = None

    def existing(self) -> None:
        self.summary.existing += 1
        self.taken += 1

    def corrupt(self, key: str) -> None:
        self.summary.corrupt += 1
        self.summary.corrupt_keys.append(key)

    def add(self, image: NewImage) -> None:
        self.pending.append(image)
        self.taken += 1
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Hand the gathered images to the writer thread (after the batch before them is written)."""
        if self.pending:
            batch, self.pending = self.pending, []
            self.settle()
            self.writing = (self.thread.submit(self._write, batch), batch)
        self._progress()

    def settle(self) -> None:
        """Wait for the batch being written (its error, if any, is raised here) and count it."""
        if self.writing is None:
            return
        future, batch = self.writing
        self.writing = None
        for image, new in zip(batch, future.result(), strict=True):
            self.summary.added += new
            self.summary.existing += not new
            self.summary.per_class[image.label] = self.summary.per_class.get(image.label, 0) + new

    def close(self) -> None:
        self.flush()
        self.settle()
        self._progress()

    def _write(self, batch: list[NewImage]) -> list[bool]:
        with Session(bind=self.conn, expire_on_commit=False) as session:
            try:
                created = add_images(session, source_kind=self.source.kind, images=batch)
                session.commit()
            except BaseException:
                session.rollback()
                raise
        return created

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(min(self.taken, self.total), self.total)


def _import_class(engine: Engine, executor, writer: _Writer, *, label: str, items: list[Candidate],
                  quota: int | None, in_flight: int) -> None:
    """Take one class's candidates in order until `quota` are taken (None: all of them)."""
    writer.summary.per_class.setdefault(label, 0)
    taken = 0

    stored = None  # a large class: the keys already stored under its common prefix, in one query
    if len(items) > 4 * CHUNK:
        with session_scope(engine) as session:
            stored = stored_source_keys_under(session, prefix=os.path.commonprefix([c.key for c in items]))

    def chunks() -> Iterator[tuple[list[Candidate], set[str]]]:
        for start in range(0, len(items), CHUNK):
            if quota is not None and taken >= quota:
                return
            chunk = items[start:start + CHUNK]
            if stored is not None:
                known = {c.key for c in chunk if c.key in stored}
            else:
                with session_scope(engine) as session:
                    known = stored_source_keys(session, keys=[c.key for c in chunk])
            yield chunk, known

    def to_decode(job: tuple[list[Candidate], set[str]]) -> list[str]:
        chunk, known = job
        return [c.path for c in chunk if c.path is not None and c.key not in known]

    for (chunk, known), prepared in ordered_map(executor, prepare_files, chunks(), payload=to_decode,
                                                in_flight=in_flight):
        results = iter(prepared)
        for cand in chunk:
            if quota is not None and taken >= quota:
                break
            if cand.key in known:
                writer.existing()
                taken += 1
                continue
            image = next(results) if cand.path is not None else _load_here(cand)
            if image.png is None:
                writer.corrupt(cand.key)
                continue
            writer.add(NewImage(source_key=cand.key, label=label, png=image.png, content_hash=image.content_hash,
                                width=image.width, height=image.height))
            taken += 1


def _load_here(cand: Candidate) -> Prepared:
    try:
        return prepare_image(cand.load())
    except UNREADABLE:
        return Prepared(None)
