"""Caption generation: greedy or sampled, batched, and a streaming generator for the playground.

Image embeddings enter only in the prefill (`inputs_embeds`); decoding then runs on the KV
cache with ordinary token embeddings, through the lean loop in decode.py. `hf_generate` is the
same thing through Hugging Face `generate()`: the reference the lean loop is tested and
benchmarked against.
"""
from __future__ import annotations

from collections.abc import Iterator
from threading import Lock

import torch
from PIL import Image

from pipeline.generation import TOKENIZER_LOCK
from pipeline.student.config import GenerationConfig
from pipeline.student.decode import LeanDecoder, decode_tokens
from pipeline.student.model import Student


def prefill_embeds(student: Student, images: list[Image.Image]) -> torch.Tensor:
    """(B, P, D) prompt embeddings with each image's patches spliced in (one prompt length)."""
    device = next(student.projector.parameters()).device
    ids = torch.tensor([student.layout.prompt_ids] * len(images), device=device)
    return student.embed(ids, student.pixels(images).to(device))


def end_ids(student: Student) -> list[int]:
    return [student.layout.end_id, student.tokenizer.convert_tokens_to_ids("<|endoftext|>")]


_BUILD = Lock()  # building a decoder swaps the model's kernels: one build at a time


def decoder(student: Student) -> LeanDecoder:
    """The student's lean decoder, built once (it holds references to the weights, not copies,
    so training steps in between are seen). It keeps no state of any generation: a cached
    student is shared by every playground session."""
    with _BUILD:
        if student.__dict__.get("_decoder") is None:
            lm = student.lm.get_base_model() if hasattr(student.lm, "get_base_model") else student.lm
            wide = bool(getattr(student.inference, "prefill_fp32", False))
            student.__dict__["_decoder"] = LeanDecoder(lm, prefill_fp32=wide)
        return student.__dict__["_decoder"]


def call_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """The random generator of one generation (None: unseeded, torch's global one). Seeded here,
    not through torch.manual_seed, so a concurrent generation cannot move it."""
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


def _tokens(student: Student, images: list[Image.Image], gc: GenerationConfig, *,
            stop_at_eos: bool = True) -> Iterator[torch.Tensor]:
    with torch.no_grad():
        embeds = prefill_embeds(student, images)
    gen = call_generator(gc.seed, embeds.device) if gc.do_sample else None
    yield from decode_tokens(decoder(student), embeds, gc, eos_ids=end_ids(student),
                             pad_id=student.tokenizer.pad_token_id, stop_at_eos=stop_at_eos, generator=gen)


def generate_ids(student: Student, images: list[Image.Image], *,
                 config: GenerationConfig = GenerationConfig(), stop_at_eos: bool = True) -> torch.Tensor:
    """New token ids (B, T_new) for a batch of images, pad after each row's end token."""
    steps = list(_tokens(student, images, config, stop_at_eos=stop_at_eos))
    return torch.stack(steps, dim=1)


def generate_captions(
    student: Student, images: list[Image.Image], *, config: GenerationConfig = GenerationConfig(),
    batch_size: int = 16,
) -> list[str]:
    """One caption per image (the text the student writes after `<|assistant|>`)."""
    out: list[str] = []
    for s in range(0, len(images), batch_size):
        new = generate_ids(student, images[s:s + batch_size], config=config)
        with TOKENIZER_LOCK:
            texts = student.tokenizer.batch_decode(new, skip_special_tokens=True)
        out += [t.strip() for t in texts]
    return out


def stream_caption(
    student: Student, image: Image.Image, *, config: GenerationConfig = GenerationConfig(),
) -> Iterator[str]:
    """Yield the caption in text pieces as tokens are decoded (for st.write_stream).

    Text is re-decoded from all tokens so far (SentencePiece spaces and multi-byte characters
    come out right); a piece is held back while it ends in an incomplete character.
    """
    ids: list[int] = []
    shown = ""
    eos = set(end_ids(student))
    for tok in _tokens(student, [image], config):
        if int(tok[0]) in eos:
            break
        ids.append(int(tok[0]))
        with TOKENIZER_LOCK:
            text = student.tokenizer.decode(ids, skip_special_tokens=True).lstrip()
        if len(text) > len(shown) and not text.endswith("\ufffd"):
            yield text[len(shown):]
            shown = text
    with TOKENIZER_LOCK:
        text = student.tokenizer.decode(ids, skip_special_tokens=True).lstrip()
    if len(text) > len(shown):
        yield text[len(shown):]


def hf_generate(student: Student, images: list[Image.Image], *,
                config: GenerationConfig = GenerationConfig(), stop_at_eos: bool = True,
                streamer=None) -> torch.Tensor:
    """The reference: the same decoding through Hugging Face `generate()` (B, T_new)."""
    from transformers import GenerationConfig as HFGenerationConfig

    gc = config
    hf = HFGenerationConfig(
        max_new_tokens=gc.max_new_tokens, do_sample=gc.do_sample,
        temperature=gc.temperature if gc.do_sample else None,
        top_p=gc.top_p if gc.do_sample else None, top_k=gc.top_k if gc.do_sample else None,
        repetition_penalty=gc.repetition_penalty, eos_token_id=end_ids(student),
        pad_token_id=student.tokenizer.pad_token_id, use_cache=True,
    )
    if not stop_at_eos:
        hf.min_new_tokens = gc.max_new_tokens
    if gc.seed is not None:
        torch.manual_seed(gc.seed)
    with torch.no_grad():
        embeds = prefill_embeds(student, images)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        # with only inputs_embeds given, generate returns just the new tokens
        return student.lm.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=hf,
                                   streamer=streamer)
