"""The image path into Phi-3: patchify -> patch MLP (or a small conv stem) + learned positions ->
spliced embeddings.

No pretrained image encoder: each 32x32 image becomes n_patches vectors in Phi-3's embedding
space that replace the `<|placeholder1|>` tokens of the chat prompt, for training and prefill.
StudentConfig.projector picks PatchProjector ("mlp") or ConvProjector ("conv"), both from scratch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from pipeline.student.config import StudentConfig

# CIFAR-10 channel statistics (train split), for normalisation.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IGNORE_INDEX = -100


def images_to_pixels(images: list[Image.Image], *, image_size: int) -> torch.Tensor:
    """PIL images -> normalised float tensor (B, 3, H, W)."""
    arrs = []
    for im in images:
        im = im.convert("RGB")
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.BICUBIC)
        arrs.append(np.asarray(im, dtype=np.float32) / 255.0)
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)  # (B, 3, H, W)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def blank_image(size: int = 32) -> Image.Image:
    """The ablation control: a uniform mid-grey image carrying no content."""
    return Image.new("RGB", (size, size), (128, 128, 128))


def patchify(pixels: torch.Tensor, *, patch_size: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, N, 3*p*p), patches in raster order."""
    b, c, h, w = pixels.shape
    p = patch_size
    x = pixels.reshape(b, c, h // p, p, w // p, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, H/p, W/p, C, p, p)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


class PatchProjector(nn.Module):
    """Patch MLP with learned position embeddings into the LM embedding space."""

    def __init__(self, cfg: StudentConfig, lm_hidden: int):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.mlp = nn.Sequential(
            nn.Linear(cfg.patch_dim, cfg.projector_hidden),
            nn.GELU(),
            nn.Linear(cfg.projector_hidden, lm_hidden),
        )
        self.pos = nn.Parameter(torch.randn(cfg.n_patches, lm_hidden) * 0.02)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = patchify(pixels, patch_size=self.patch_size)  # (B, N, 3*p*p)
        return self.mlp(patches) + self.pos  # (B, N, D)


class ConvProjector(nn.Module):
    """A convolutional stem trained from scratch, then one token per patch into the LM space.

    3 -> c -> 2c channels, two 3x3 convolutions at stride 2 (each with GroupNorm and GELU), so a
    32x32 image becomes an 8x8 map; its (p/4)x(p/4) blocks give the same n_patches tokens as
    PatchProjector, each mapped by the projector MLP (projector_hidden wide) into the LM width,
    plus learned positions. Two stride-2 layers keep it ~4x cheaper than full-resolution ones.
    """

    def __init__(self, cfg: StudentConfig, lm_hidden: int):
        super().__init__()
        c = cfg.conv_channels
        self.block = cfg.patch_size // 4
        self.stem = nn.Sequential(
            nn.Conv2d(3, c, 3, stride=2, padding=1), nn.GroupNorm(_groups(c), c), nn.GELU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.GroupNorm(_groups(2 * c), 2 * c), nn.GELU(),
        )
        self.mlp = nn.Sequential(
            nn.Linear(2 * c * self.block * self.block, cfg.projector_hidden),
            nn.GELU(),
            nn.Linear(cfg.projector_hidden, lm_hidden),
        )
        self.pos = nn.Parameter(torch.randn(cfg.n_patches, lm_hidden) * 0.02)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        feats = patchify(self.stem(pixels), patch_size=self.block)  # (B, N, 2c*(p/4)^2), raster order
        return self.mlp(feats) + self.pos  # (B, N, D)


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def build_projector(cfg: StudentConfig, lm_hidden: int) -> nn.Module:
    """A fresh projector of the kind cfg.projector names."""
    return ConvProjector(cfg, lm_hidden) if cfg.projector == "conv" else PatchProjector(cfg, lm_hidden)


@dataclass(frozen=True)
class PromptLayout:
    """Token ids of the chat prompt that precedes every caption."""

    prompt_ids: list[int]  # <|user|>\n <img>*N \n prompt <|end|>\n <|assistant|>\n
    image_token_id: int
    end_id: int  # <|end|>, the end-of-turn token the student must learn to emit


def build_prompt_layout(tokenizer, cfg: StudentConfig) -> PromptLayout:
    """Chat-format the user turn with n_patches image placeholders; check the count survives."""
    image_token_id = tokenizer.convert_tokens_to_ids(cfg.image_token)
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    content = cfg.image_token * cfg.n_patches + "\n" + cfg.prompt
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True,
        return_dict=False,
    )
    ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
    n_img = sum(1 for t in ids if t == image_token_id)
    if n_img != cfg.n_patches:
        raise ValueError(f"prompt holds {n_img} image tokens, expected {cfg.n_patches}")
    return PromptLayout(prompt_ids=ids, image_token_id=image_token_id, end_id=end_id)


def build_example(tokenizer, layout: PromptLayout, caption: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one pair: labels are -100 except caption tokens and <|end|>.

    Labels are *not* shifted: Hugging Face causal LMs shift them inside the loss.
    """
    cap = tokenizer(caption.strip(), add_special_tokens=False)["input_ids"] + [layout.end_id]
    ids = layout.prompt_ids + cap
    labels = [IGNORE_INDEX] * len(layout.prompt_ids) + cap
    return ids, labels


def collate(examples: list[tuple[list[int], list[int]]], *, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; padded positions get attention 0 and label -100."""
    n = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros((len(examples), n), dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attn[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attn}


class Student(nn.Module):
    """Phi-3 (with LoRA, possibly merged) + patch projector + tokenizer + prompt layout."""

    inference = None  # load_student's PathChoice (inference_path.py): how the base runs, and why

    def __init__(self, lm: nn.Module, projector: nn.Module, tokenizer, cfg: StudentConfig):
        super().__init__()
        self.lm = lm
        self.projector = projector
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.layout = build_prompt_layout(tokenizer, cfg)

    @property
    def embed_dtype(self) -> torch.dtype:
        return self.lm.get_input_embeddings().weight.dtype

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        return images_to_pixels(images, image_size=self.cfg.image_size)

    def embed(self, input_ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Token embeddings with every image placeholder replaced by a projected patch."""
        tok = self.lm.get_input_embeddings()(input_ids)  # (B, T, D)
        img = self.projector(pixels.to(next(self.projector.parameters()).dtype))  # (B, N, D)
        mask = (input_ids == self.layout.image_token_id).unsqueeze(-1)  # (B, T, 1)
        return tok.masked_scatter(mask, img.to(tok.dtype))

    def forward(self, input_ids, attention_mask, labels, pixels) -> torch.Tensor:
        """Mean cross-entropy over the caption and <|end|> tokens.

        Every prompt has the same length P, so only the last T-(P-1) positions can predict a
        label: the LM head (32064-way) runs on those alone, and HF shifts the sliced labels.
        """
        embeds = self.embed(input_ids, pixels)
        keep = input_ids.shape[1] - (len(self.layout.prompt_ids) - 1)
        out = self.lm(inputs_embeds=embeds, attention_mask=attention_mask,
                      labels=labels[:, -keep:], logits_to_keep=keep, use_cache=False)
        return out.loss
