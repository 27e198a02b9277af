"""The SmolVLM teacher: the one loader and generation (model.py), drafting captions into the store
(drafting.py), auto-flags (flags.py)."""
