"""Caption generation: greedy or sampled, batched, and a streaming generator for the playground.

Image embeddings enter only in the prefill (`inputs_embeds`); decoding then runs on the KV
cache with ordinary token embeddings.
"""
from __future__ import annotations

from threading import Thread
from typing import Iterator

import torch
from PIL import Image

from pipeline.student.config import GenerationConfig
from pipeline.student.model import Student


def _prefill(student: Student, images: list[Image.Image]) -> dict:
    device = next(student.projector.parameters()).device
    ids = torch.tensor([student.layout.prompt_ids] * len(images), device=device)  # same length
    embeds = student.embed(ids, student.pixels(images).to(device))
    return {"inputs_embeds": embeds, "attention_mask": torch.ones_like(ids)}


def _hf_kwargs(student: Student, gc: GenerationConfig) -> dict:
    from transformers import GenerationConfig as HFGenerationConfig

    eos = [student.layout.end_id, student.tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    hf = HFGenerationConfig(
        max_new_tokens=gc.max_new_tokens, do_sample=gc.do_sample,
        temperature=gc.temperature if gc.do_sample else None,
        top_p=gc.top_p if gc.do_sample else None, top_k=gc.top_k if gc.do_sample else None,
        repetition_penalty=gc.repetition_penalty, eos_token_id=eos,
        pad_token_id=student.tokenizer.pad_token_id, use_cache=True,
    )
    return {"generation_config": hf}


@torch.no_grad()
def generate_captions(
    student: Student, images: list[Image.Image], *, config: GenerationConfig = GenerationConfig(),
    batch_size: int = 16,
) -> list[str]:
    """One caption per image (the text the student writes after `<|assistant|>`)."""
    if config.seed is not None:
        torch.manual_seed(config.seed)
    out: list[str] = []
    for s in range(0, len(images), batch_size):
        chunk = images[s:s + batch_size]
        new = student.lm.generate(**_prefill(student, chunk), **_hf_kwargs(student, config))
        # with only inputs_embeds given, generate returns just the new tokens (B, T_new)
        out += [t.strip() for t in student.tokenizer.batch_decode(new, skip_special_tokens=True)]
    return out


def stream_caption(
    student: Student, image: Image.Image, *, config: GenerationConfig = GenerationConfig(),
) -> Iterator[str]:
    """Yield the caption in text pieces as tokens are decoded (for st.write_stream)."""
    from transformers import TextIteratorStreamer

    if config.seed is not None:
        torch.manual_seed(config.seed)
    streamer = TextIteratorStreamer(student.tokenizer, skip_prompt=False, skip_special_tokens=True,
                                    timeout=300)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with torch.no_grad():
                student.lm.generate(**_prefill(student, [image]), **_hf_kwargs(student, config),
                                    streamer=streamer)
        except BaseException as e:  # surfaced to the caller below
            errors.append(e)
            streamer.end()

    worker = Thread(target=run, daemon=True)
    worker.start()
    first = True
    for piece in streamer:
        if first:
            piece, first = piece.lstrip(), False
        if piece:
            yield piece
    worker.join()
    if errors:
        raise errors[0]
