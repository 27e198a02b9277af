"""Image sources (bundled examples, a folder per class, CIFAR-10) and the idempotent import.

`import_images(engine, source=ImportSource.bundled, n_per_class=10)` adds a balanced, seeded
sample; re-running it adds nothing, and unreadable files are counted instead of crashing.
"""
from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from sqlalchemy.engine import Engine

from db.catalog import add_image
from db.engine import session_scope
from db.models import SourceKind
from pipeline.data.images import IMAGE_SUFFIXES, UploadError, decode_file, pixel_hash, to_png

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


@dataclass(frozen=True)
class Candidate:
    """One image a source can provide, not yet decoded."""

    key: str  # source_key stored on the image, e.g. "bundled:cat/cat_0001.png"
    label: str
    load: Callable[[], PILImage.Image]


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


def _open_file(path: Path) -> Callable[[], PILImage.Image]:
    def load() -> PILImage.Image:
        return decode_file(path)  # the upload path's decoder: bomb checks, 16-bit scaling
    return load


def _refuse(message: str) -> Callable[[], PILImage.Image]:
    def load() -> PILImage.Image:
        raise UploadError(message)
    return load


def folder_candidates(root: Path, *, prefix: str) -> Iterator[Candidate]:
    """Images under `root/<class>/...`, labelled by their sub-folder, in a stable order.

    A file (or symlink) that resolves outside `root` is never read: it is counted as unreadable.
    A folder without class sub-folders holding images raises SourceError naming the layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"image folder {root} does not exist (expected the layout {LAYOUT})")
    real_root = root.resolve()
    found = 0
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(class_dir.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                found += 1
                key = f"{prefix}{f.relative_to(root).as_posix()}"
                if not f.resolve().is_relative_to(real_root):
                    yield Candidate(key, class_dir.name, _refuse(f"{f.name} points outside the import folder"))
                    continue
                yield Candidate(key, class_dir.name, _open_file(f))
    if not found:
        loose = sum(1 for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        hint = f"; it holds {loose} image(s) directly, move them into class sub-folders" if loose else ""
        raise SourceError(f"image folder {root} has no class sub-folders with images{hint}. "
                          f"Expected the layout {LAYOUT} (the sub-folder's name is the class).")


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
        yield Candidate(f"cifar10:{split.value}:{i}", ds.classes[target], lambda i=i: ds[i][0])


def candidates_for(source: ImportSource, *, path: Path | None = None, split: Split = Split.test,
                   download: bool = False) -> Iterator[Candidate]:
    """The candidates of one source (the split matters for CIFAR-10 only)."""
    source, split = ImportSource(source), Split(split)
    if source == ImportSource.bundled:
        return folder_candidates(BUNDLED_DIR, prefix="bundled:")
    if source == ImportSource.folder:
        if path is None:
            raise SourceError("the folder source needs --path <folder with one sub-folder per class>")
        return folder_candidates(Path(path), prefix=f"{Path(path).resolve().as_posix()}/")
    if path is None:
        raise SourceError("the cifar10 source needs --cifar-root <folder>")
    return cifar10_candidates(Path(path), split=split, download=download)


def balanced_order(candidates: Iterator[Candidate], *, seed: int) -> dict[str, list[Candidate]]:
    """Candidates grouped by class, each class shuffled with `seed` (the same seed, the same sample)."""
    by_class: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_class.setdefault(c.label, []).append(c)
    for label, items in by_class.items():
        random.Random(f"{seed}:{label}").shuffle(items)
    return dict(sorted(by_class.items()))


def import_images(engine: Engine, *, source: ImportSource, n_per_class: int, seed: int = 0,
                  split: Split = Split.test, path: Path | None = None, download: bool = False,
                  on_progress: Callable[[int, int], None] | None = None) -> ImportSummary:
    """Add up to `n_per_class` images of each class; corrupt files are skipped (and counted).

    A corrupt file is replaced by the next candidate of its class, so the sample stays balanced.
    Each class is committed in its own short transaction.
    """
    if n_per_class < 1:
        raise SourceError("n_per_class must be >= 1")
    source = ImportSource(source)
    groups = balanced_order(candidates_for(source, path=path, split=split, download=download), seed=seed)
    summary = ImportSummary()
    for done, (label, items) in enumerate(groups.items(), start=1):
        summary.per_class[label] = 0
        taken = 0
        with session_scope(engine) as session:
            for cand in items:
                if taken == n_per_class:
                    break
                try:
                    image = cand.load()
                except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
                        PILImage.DecompressionBombError):  # UploadError is a ValueError
                    summary.corrupt += 1
                    summary.corrupt_keys.append(cand.key)
                    continue
                taken += 1
                _, created = add_image(
                    session, source_kind=source.kind, source_key=cand.key, label=label, png=to_png(image),
                    content_hash=pixel_hash(image), width=image.width, height=image.height)
                summary.added += created
                summary.existing += not created
                summary.per_class[label] += created
        if on_progress is not None:
            on_progress(done, len(groups))
    return summary
