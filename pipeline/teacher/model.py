"""The SmolVLM teacher: the one `from_pretrained` for the SmolVLM family, and batched captioning.

`teacher = load_teacher("HuggingFaceTB/SmolVLM-256M-Instruct")`, then
`caption_images(teacher, images, prompt=DEFAULT_PROMPT, params=TEACHER_GENERATION)`. `encode_inputs`
is the one way an image and a prompt become the teacher's input (captioning and the playground).
"""
from __future__ import annotations

import hashlib
import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from PIL import Image as PILImage

from pipeline.generation import TOKENIZER_LOCK, GenerationConfig
from pipeline.hardware import cpu_has_bf16, keep_freed_memory, resolve_device
from pipeline.settings import TEACHER_BATCH_SIZE
from pipeline.tiny import is_tiny_model

DEFAULT_PROMPT = "Can you describe this image? Answer in one or two sentences."
SINGLE_TILE_EDGE = 512  # images no larger than this are one 512-px tile: 64 image tokens
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TINY_COMMAND = "python -m pipeline build-tiny teacher <folder>"
DEFAULT_BATCH_SIZE = TEACHER_BATCH_SIZE
"""Images per generation batch on the default path (CAPSTUDIO_BATCH_SIZE overrides it)."""


class TeacherError(RuntimeError):
    """A teacher problem with a message that says what to do about it."""


class ModelLoadError(TeacherError):
    """The teacher model could not be loaded (no network, wrong path, not a SmolVLM folder)."""


TEACHER_GENERATION = GenerationConfig(max_new_tokens=60, repetition_penalty=1.1, seed=0)
"""The teacher's decoding defaults: small VLMs loop without a repetition penalty; seeded per batch."""
PROVENANCE_FIELDS = ("max_new_tokens", "do_sample", "temperature", "top_p", "repetition_penalty", "seed")
"""The decoding settings stored on each draft, as they always were (top_k only when it is used)."""


@dataclass
class Teacher:
    """A loaded teacher: model, processor, and where it came from (for provenance)."""

    model: torch.nn.Module
    processor: object
    model_id: str
    revision: str | None
    device: str
    dtype: str
    tiny: bool = False
    attn: str = "sdpa"


@dataclass(frozen=True)
class CaptionResult:
    """One caption with its timings (for the playground)."""

    text: str
    seconds: float
    new_tokens: int
    image_tokens: int
    processor_params: dict

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def pick_dtype(device: str, dtype: str = "auto") -> str:
    """'auto' -> bf16 on GPUs and on CPUs with native bf16, else float32."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, not {dtype!r}")
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_has_bf16() else "float32"


@dataclass(frozen=True)
class CaptionPlan:
    """What the default captioning path runs on a device: the compute dtype, images per batch and
    (per batch, `processor_params`) the processor overrides. The drafting job (`python -m pipeline
    caption`) and the bench's "default" row both take it from `caption_plan`."""

    device: str
    dtype: str
    batch_size: int

    @staticmethod
    def processor_params(images: list[PILImage.Image]) -> dict:
        return processor_params_for(images)


def caption_plan(device: str = "auto", *, dtype: str = "auto", batch_size: int | None = None) -> CaptionPlan:
    """The default path's choices: bf16 only where the hardware multiplies it natively (GPUs,
    AVX512-BF16/AMX CPUs; emulated bf16 is slower than fp32), `DEFAULT_BATCH_SIZE` images a batch
    unless `batch_size` is given, and `processor_params_for` (one 512-px tile for small images)."""
    device = resolve_device(device)
    size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    if size < 1:
        raise ValueError("batch_size must be >= 1")
    return CaptionPlan(device=device, dtype=pick_dtype(device, dtype), batch_size=size)


def load_teacher(model: str, *, device: str = "auto", dtype: str = "auto") -> Teacher:
    """Load a SmolVLM (Idefics3) model and processor from a hub id or a local folder.

    A hub id is looked up in the local cache first; the network is tried only when it answers,
    so an offline machine gets a clear error at once instead of minutes of retries.
    """
    plan = caption_plan(device, dtype=dtype)
    device, dtype = plan.device, plan.dtype
    try:
        try:
            processor, net = _from_pretrained(model, dtype, local_only=not Path(model).is_dir())
        except OSError:
            if Path(model).is_dir() or not hub_reachable():
                raise
            processor, net = _from_pretrained(model, dtype, local_only=False)
    except (OSError, ValueError) as exc:  # HFValidationError is a ValueError, network errors OSError
        raise ModelLoadError(
            f"could not load the teacher model {model!r} ({type(exc).__name__}: {exc}). Without "
            "network access, point CAPSTUDIO_TEACHER_MODEL or --teacher-model at a local folder "
            f"holding the model files, or build a tiny random test model with `{TINY_COMMAND}`."
        ) from exc
    processor.tokenizer.padding_side = "left"  # batched generation continues from the right edge
    net = net.to(device).eval()
    return Teacher(model=net, processor=processor, model_id=str(model), revision=_revision(model, net),
                   device=device, dtype=dtype, tiny=is_tiny_model(model))


def prepare_long_run(teacher: Teacher) -> Teacher:
    """Set this process up for a long captioning run. Only for a process that exists to caption
    (the drafting job `python -m pipeline caption`, which the app starts as one; a Ray worker; the
    bench's default row), never a server or a test process: on the CPU, glibc keeps freed memory for
    reuse (`hardware.keep_freed_memory`), which spares the page faults of re-allocating the vision
    tower's activations every layer. The captions are the same; the process holds on to its peak
    memory until it exits."""
    if teacher.device == "cpu":
        keep_freed_memory()
    return teacher


def _from_pretrained(model: str, dtype: str, *, local_only: bool):
    """The one `from_pretrained` site of the SmolVLM family (processor and model)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model, local_files_only=local_only)
    net = AutoModelForImageTextToText.from_pretrained(
        model, dtype=DTYPES[dtype], attn_implementation="sdpa", local_files_only=local_only)
    return processor, net


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face Hub endpoint accepts a TCP connection (honours HF_HUB_OFFLINE)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _revision(model: str, net: torch.nn.Module) -> str | None:
    """The hub commit when known; for a local folder a hash of its config and weights."""
    folder = Path(model)
    if not folder.is_dir():
        return getattr(net.config, "_commit_hash", None)
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.json")) + sorted(folder.glob("*.safetensors")):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return ("tiny-random-sha256:" if is_tiny_model(folder) else "local-sha256:") + h.hexdigest()[:16]


def processor_params_for(images: list[PILImage.Image]) -> dict:
    """Processor overrides: one 512-px tile (64 tokens) when every image is small, else defaults.

    The defaults upscale a 32x32 image to 2048 px and split it into 17 tiles (1,088 tokens).
    """
    if max(max(im.size) for im in images) <= SINGLE_TILE_EDGE:
        return {"do_image_splitting": False, "size": {"longest_edge": SINGLE_TILE_EDGE}}
    return {}


def chat_prompt(teacher: Teacher, prompt: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return teacher.processor.apply_chat_template(messages, add_generation_prompt=True)


def processor_inputs(teacher: Teacher, images: list[PILImage.Image], prompt: str, *,
                     processor_params: dict | None = None) -> tuple[dict, dict]:
    """The processor's output for `images` (one chat prompt each, left-padded) on the CPU, and the
    processor overrides used (default: `processor_params_for(images)`)."""
    proc = processor_params_for(images) if processor_params is None else processor_params
    text = chat_prompt(teacher, prompt)
    with TOKENIZER_LOCK:  # the processor sets the shared tokenizer's padding
        inputs = teacher.processor(text=[text] * len(images), images=[[im.convert("RGB")] for im in images],
                                   return_tensors="pt", padding=True, **proc)
    return dict(inputs), proc


def encode_inputs(teacher: Teacher, images: list[PILImage.Image], prompt: str, *,
                  processor_params: dict | None = None) -> dict:
    """The teacher's model inputs for `images` with `prompt`, on its device and in its dtype."""
    inputs, _ = processor_inputs(teacher, images, prompt, processor_params=processor_params)
    dtype = DTYPES[teacher.dtype]
    return {k: (v.to(teacher.device, dtype) if v.is_floating_point() else v.to(teacher.device))
            for k, v in inputs.items()}


class _CallSampler:
    """Draws the next token from the call's own generator and leaves only it for the greedy pick.

    Hugging Face `generate()` samples from torch's global generator, which every concurrent
    generation (and torch.manual_seed anywhere) moves; this keeps a seeded caption the same when
    other users generate at the same time."""

    def __init__(self, generator: torch.Generator | None):
        self.generator = generator

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.nn.functional.softmax(scores.float(), dim=-1)
        pick = torch.multinomial(probs, num_samples=1, generator=self.generator)  # (B, 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, pick, 0.0)


def call_generate_kwargs(teacher: Teacher, params: GenerationConfig) -> dict:
    """`generate()` keyword arguments for one call: greedy as is; sampling through the call's
    own seeded generator (temperature, top-k, top-p, then the draw), never the global one."""
    from transformers import LogitsProcessorList

    kw = {**params.generate_kwargs(), "pad_token_id": teacher.processor.tokenizer.pad_token_id}
    if not params.do_sample:
        return kw
    procs = LogitsProcessorList(params.sampling_warpers())
    gen = None if params.seed is None else torch.Generator(device=teacher.model.device).manual_seed(params.seed)
    procs.append(_CallSampler(gen))
    for knob in ("temperature", "top_p", "top_k"):
        kw.pop(knob, None)
    return {**kw, "do_sample": False, "logits_processor": procs}


def generate_ids(teacher: Teacher, inputs: dict, params: GenerationConfig, **extra) -> torch.Tensor:
    """The new token ids (B, T) `generate()` writes for encoded `inputs` (`encode_inputs`); `extra`
    goes to `generate()` as is (the bench fixes the length with min_new_tokens)."""
    batch = int(inputs["input_ids"].shape[0])
    try:
        with torch.inference_mode():
            out = teacher.model.generate(**inputs, **call_generate_kwargs(teacher, params), **extra)
    except torch.OutOfMemoryError as exc:
        raise _oom_error(batch) from exc
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower() or "can't allocate memory" in str(exc).lower():
            raise _oom_error(batch) from exc
        raise
    return out[:, inputs["input_ids"].shape[1]:]


def generate_batch(teacher: Teacher, images: list[PILImage.Image], *, prompt: str,
                   params: GenerationConfig) -> tuple[list[str], int]:
    """Captions for one batch (left-padded); returns (texts, new tokens generated)."""
    new = generate_ids(teacher, encode_inputs(teacher, images, prompt), params)
    with TOKENIZER_LOCK:
        texts = teacher.processor.batch_decode(new, skip_special_tokens=True)
    pad = teacher.processor.tokenizer.pad_token_id
    return [t.strip() for t in texts], int((new != pad).sum())


def _oom_error(batch: int) -> TeacherError:
    smaller = max(1, batch // 2)
    return TeacherError(
        f"out of memory while captioning a batch of {batch} images: use a smaller batch "
        f"(--batch-size {smaller} or CAPSTUDIO_BATCH_SIZE={smaller}), or --dtype bfloat16."
    )


def caption_images(teacher: Teacher, images: list[PILImage.Image], *, prompt: str = DEFAULT_PROMPT,
                   params: GenerationConfig = TEACHER_GENERATION,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> list[str]:
    """Captions for `images`, in order, generated `batch_size` at a time."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    texts: list[str] = []
    for start in range(0, len(images), batch_size):
        batch_texts, _ = generate_batch(teacher, images[start:start + batch_size], prompt=prompt, params=params)
        texts.extend(batch_texts)
    return texts


def caption_one(teacher: Teacher, image: PILImage.Image, *, prompt: str = DEFAULT_PROMPT,
                params: GenerationConfig = TEACHER_GENERATION) -> CaptionResult:
    """Caption a single (uploaded) image and time it: for the playground."""
    inputs, proc = processor_inputs(teacher, [image], prompt)
    n_image_tokens = int((inputs["input_ids"] == teacher.model.config.image_token_id).sum())
    t0 = time.perf_counter()
    texts, new_tokens = generate_batch(teacher, [image], prompt=prompt, params=params)
    return CaptionResult(text=texts[0], seconds=time.perf_counter() - t0, new_tokens=new_tokens,
                         image_tokens=n_image_tokens, processor_params=proc)


def provenance(teacher: Teacher, *, prompt: str, params: GenerationConfig,
               processor_params: dict, batch_size: int) -> dict:
    """What to store on a draft: model, revision, prompt, generation and processor params."""
    decoding = {k: getattr(params, k) for k in PROVENANCE_FIELDS}
    if params.top_k:
        decoding["top_k"] = params.top_k
    gen = {**decoding, "dtype": teacher.dtype, "device": teacher.device,
           "attn_implementation": teacher.attn, "batch_size": batch_size}
    if teacher.tiny:
        gen["tiny_random_model"] = True
    return {"model_id": teacher.model_id, "model_revision": teacher.revision, "prompt": prompt,
            "generation_params": json.loads(json.dumps(gen)),
            "processor_params": json.loads(json.dumps(processor_params))}
