"""Errors the store raises when a rule is broken; pages show their message as is."""


class StoreError(Exception):
    """Base class: a state change was refused and nothing was written.

    The message names nobody else; where it is about another reviewer, `named` is the same message
    with their name, which a service shows only to a curator (`message_for`)."""

    def __init__(self, message: str, *, named: str | None = None):
        super().__init__(message)
        self.named = named

    def message_for(self, *, may_see_names: bool) -> str:
        return self.named if may_see_names and self.named else str(self)


class StaleWriteError(StoreError):
    """The item changed since it was read (someone else decided it first)."""


class ClaimedError(StoreError):
    """Another reviewer holds an unexpired claim on the item."""


class InvalidCaptionError(StoreError, ValueError):
    """An empty or invisible caption, one with control characters, or one that is too long."""


class InvalidActionError(StoreError, ValueError):
    """An action that does not fit the item's state or lacks what it needs (a reject reason)."""


class NothingToUndoError(StoreError):
    """The reviewer has no decision left that can be undone."""


class InUseError(StoreError):
    """The object is referenced by another (a snapshot used by a student)."""
