"""Streamed captions with timings for the playground: time to first text, tokens/s and total
time of the teacher and of a student on one image, and the teacher's view of that image.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from threading import Thread

import torch
from PIL import Image as PILImage

from pipeline.generation import TOKENIZER_LOCK, GenerationConfig, LockedDecode
from pipeline.teacher.model import (
    DEFAULT_PROMPT,
    Teacher,
    call_generate_kwargs,
    encode_inputs,
    processor_inputs,
)


@dataclass(frozen=True)
class Timings:
    """Time to first text, total time and new tokens of one generation."""

    ttft_s: float | None
    total_s: float
    new_tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.total_s if self.total_s > 0 else 0.0


class TimedStream:
    """Iterate to get text pieces as they are decoded; afterwards `.text` and `.timings`."""

    def __init__(self, pieces: Callable[[], Iterator[str]], count_tokens: Callable[[str], int]):
        self._pieces, self._count = pieces, count_tokens
        self.text, self.timings = "", None

    def __iter__(self) -> Iterator[str]:
        t0, ttft, parts = time.perf_counter(), None, []
        for piece in self._pieces():
            if ttft is None and piece.strip():
                ttft = time.perf_counter() - t0
            parts.append(piece)
            yield piece
        self.text = "".join(parts).strip()
        self.timings = Timings(ttft_s=ttft, total_s=time.perf_counter() - t0,
                               new_tokens=self._count(self.text))

    def run(self) -> str:
        """Consume the stream without showing it (scripts and tests)."""
        for _ in self:
            pass
        return self.text


def teacher_tile(teacher: Teacher, image: PILImage.Image) -> PILImage.Image:
    """The first tile the teacher's processor makes of `image`, de-normalised back to RGB."""
    inputs, _ = processor_inputs(teacher, [image], DEFAULT_PROMPT)
    ip = teacher.processor.image_processor
    x = inputs["pixel_values"][0, 0].float()  # (3, H, W), normalised
    mean = torch.tensor(ip.image_mean).view(3, 1, 1)
    std = torch.tensor(ip.image_std).view(3, 1, 1)
    arr = ((x * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return PILImage.fromarray(arr, "RGB")


def stream_student(student, image: PILImage.Image, params: GenerationConfig) -> TimedStream:
    from pipeline.student.generate import stream_caption

    tok = student.tokenizer
    return TimedStream(lambda: stream_caption(student, image, config=params),
                       lambda text: _count(tok, text, params))


def stream_teacher(teacher: Teacher, image: PILImage.Image, params: GenerationConfig, *,
                   prompt: str = DEFAULT_PROMPT) -> TimedStream:
    tok = teacher.processor.tokenizer
    return TimedStream(lambda: _teacher_pieces(teacher, image, params, prompt),
                       lambda text: _count(tok, text, params))


def _count(tokenizer, text: str, params: GenerationConfig) -> int:
    """Tokens in the decoded text (re-encoding can add one; the model made at most max_new_tokens)."""
    with TOKENIZER_LOCK:
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return min(n, params.max_new_tokens)


def _teacher_pieces(teacher: Teacher, image: PILImage.Image, params: GenerationConfig,
                    prompt: str) -> Iterator[str]:
    from transformers import TextIteratorStreamer

    inputs = encode_inputs(teacher, [image], prompt)
    streamer = TextIteratorStreamer(LockedDecode(teacher.processor.tokenizer), skip_prompt=True,
                                    skip_special_tokens=True, timeout=600)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with torch.inference_mode():
                teacher.model.generate(**inputs, **call_generate_kwargs(teacher, params), streamer=streamer)
        except BaseException as exc:  # surfaced below, in the caller's thread
            errors.append(exc)
            streamer.end()

    worker = Thread(target=run, daemon=True)
    worker.start()
    yield from streamer
    worker.join()
    if errors:
        raise errors[0]
