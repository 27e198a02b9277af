"""How to decode a caption: the one GenerationConfig of the teacher, the student, the playground
and compare (saved with every evaluation and compare result, stored on every teacher draft).

Each model family keeps its own defaults as a named instance: `TEACHER_GENERATION` in
pipeline/teacher/model.py (small VLMs loop without a repetition penalty); the student uses the
class defaults.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from pipeline.configs import JsonConfig, check, doc

MAX_NEW_TOKENS = 1024
TOKENIZER_LOCK = threading.RLock()
"""Held around every use of a (cached, shared) fast tokenizer while models generate: a call that
changes its padding or truncation while another thread encodes or decodes raises
`RuntimeError: Already borrowed` (huggingface/tokenizers#537). Tokenizing a caption is short."""


class LockedDecode:
    """A tokenizer seen through TOKENIZER_LOCK, for streamers that only call `decode`."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def decode(self, *args, **kwargs) -> str:
        with TOKENIZER_LOCK:
            return self._tokenizer.decode(*args, **kwargs)


@dataclass(frozen=True)
class GenerationConfig(JsonConfig):
    """Decoding settings of one caption (greedy unless do_sample)."""

    max_new_tokens: int = doc(40, f"Stop after this many new tokens (1..{MAX_NEW_TOKENS}).")
    do_sample: bool = doc(False, "Sample instead of greedy decoding.")
    temperature: float = doc(1.0, "Softmax temperature when sampling (> 0).")
    top_p: float = doc(1.0, "Nucleus sampling mass when sampling, in (0, 1].")
    top_k: int = doc(0, "Keep the k most likely tokens when sampling (0: off).")
    repetition_penalty: float = doc(1.0, "Penalty on repeated tokens: >1 discourages repeats, 1 is off.")
    seed: int | None = doc(None, "Seed set before each generation (None: not reseeded).")

    def __post_init__(self) -> None:
        check(1 <= self.max_new_tokens <= MAX_NEW_TOKENS, f"max_new_tokens must be in 1..{MAX_NEW_TOKENS}")
        check(self.temperature > 0, "temperature must be > 0")
        check(0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]")
        check(self.top_k >= 0, "top_k must be >= 0")
        check(self.repetition_penalty > 0, "repetition_penalty must be > 0")

    def sampling_warpers(self) -> list:
        """The logits warpers `generate()` builds when sampling (temperature, top-k, top-p, in its
        order); none when greedy. Both lean decoders draw from the warped logits themselves."""
        if not self.do_sample:
            return []
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        warpers = []
        if self.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k:
            warpers.append(TopKLogitsWarper(top_k=self.top_k, min_tokens_to_keep=1))
        if self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=self.top_p, min_tokens_to_keep=1))
        return warpers

    def generate_kwargs(self) -> dict:
        """Keyword arguments of Hugging Face `generate()` (sampling knobs only when sampling)."""
        kw = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
              "repetition_penalty": self.repetition_penalty}
        if self.do_sample:
            kw.update(temperature=self.temperature, top_p=self.top_p)
            if self.top_k:
                kw["top_k"] = self.top_k
        return kw
