"""Tiny random-weight Phi-3 bases (real architecture, real Phi-3 tokenizer) for tests and benches.

`build_tiny_phi3(out_dir, tokenizer_dir=find_phi3_tokenizer_dir())` writes a folder that
`pipeline.student.loader` loads exactly like `microsoft/Phi-3-mini-4k-instruct`.
"""
from __future__ import annotations

import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def find_phi3_tokenizer_dir() -> Path:
    """The shared Phi-3 tokenizer folder when present, else the copy under tests/assets."""
    for cand in (REPO_ROOT.parent / "shared" / "models" / "Phi-3-mini-4k-instruct",
                 REPO_ROOT / "tests" / "assets" / "phi3_tokenizer"):
        if all((cand / f).is_file() for f in TOKENIZER_FILES):
            return cand
    raise FileNotFoundError("no Phi-3 tokenizer files in ../shared/models or tests/assets")


def build_tiny_phi3(
    out_dir: Path,
    *,
    tokenizer_dir: Path | None = None,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    intermediate: int = 256,
    seed: int = 0,
    init_std: float = 0.02,
    dtype: str = "bfloat16",
) -> Path:
    """Save a random Phi3ForCausalLM (vocab 32064, like Phi-3-mini) plus tokenizer; returns out_dir."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = Phi3Config(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, intermediate_size=intermediate, vocab_size=32064,
        max_position_embeddings=4096, initializer_range=init_std, pad_token_id=32000, bos_token_id=1, eos_token_id=32000,
    )
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config.eos_token_id = [32000, 32007]  # <|endoftext|>, <|end|> as in Phi-3
    model.save_pretrained(out_dir)
    src = Path(tokenizer_dir) if tokenizer_dir else find_phi3_tokenizer_dir()
    for name in TOKENIZER_FILES:
        shutil.copyfile(src / name, out_dir / name)
    return out_dir
