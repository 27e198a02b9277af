"""Errors the store raises when a rule is broken; pages show their message as is."""


class StoreError(Exception):
    """Base class: a state change was refused and nothing was written."""


class StaleWriteError(StoreError):
    """The item changed since it was read (someone else decided it first)."""


class ClaimedError(StoreError):
    """Another reviewer holds an unexpired claim on the item."""


class InvalidCaptionError(StoreError, ValueError):
    """An empty caption, or one that is too long."""


class InvalidActionError(StoreError, ValueError):
    """An action that does not fit the item's state or lacks what it needs (a reject reason)."""


class NothingToUndoError(StoreError):
    """The reviewer has no decision left that can be undone."""


class InUseError(StoreError):
    """The object is referenced by another (a snapshot used by a student)."""
