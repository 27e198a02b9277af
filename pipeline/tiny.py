"""Tiny random models of the real architectures (Idefics3 teacher, Phi3 student): the one home for tests,
benches and offline use.

`python -m pipeline build-tiny teacher data/models/tiny-teacher` writes a folder that loads like
`HuggingFaceTB/SmolVLM-256M-Instruct`; its captions are noise, and a marker file says so.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_MARKER = "TINY_RANDOM_MODEL"
TINY_LABEL = "tiny random test model"
SMOLVLM_FILES = (
    "added_tokens.json", "chat_template.json", "preprocessor_config.json", "processor_config.json",
    "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
)
# SmolVLM's chat template (chat_template.json), used when we train our own tokenizer.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IMAGE_SEQ_LEN = 64  # image tokens per 512-px tile, as in SmolVLM-256M
PHI3_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def find_smolvlm_processor_dir() -> Path | None:
    """The real SmolVLM-256M processor files: ../shared/models, else tests/assets; None if absent."""
    for cand in (REPO_ROOT.parent / "shared" / "models" / "SmolVLM-256M-Instruct",
                 REPO_ROOT / "tests" / "assets" / "smolvlm_processor"):
        if all((cand / f).is_file() for f in SMOLVLM_FILES):
            return cand
    return None


def is_tiny_model(path: str | Path) -> bool:
    """Whether `path` is a folder written by `build_tiny_teacher`/`build_tiny_student`."""
    try:
        return (Path(path) / TINY_MARKER).is_file()
    except (OSError, ValueError):
        return False


def _mark_tiny(out_dir: Path, what: str, source: str) -> None:
    (out_dir / TINY_MARKER).write_text(f"{what}: {TINY_LABEL}; random weights, its output is noise.\n")
    (out_dir / "README.md").write_text(
        f"# {what}: {TINY_LABEL}\n\nBuilt by `python -m pipeline build-tiny` with random weights "
        f"and the real architecture, for tests and offline use. Its text is noise.\n\n"
        f"Tokenizer/processor: {source}\n"
    )


def build_tiny_teacher(out_dir: Path, *, processor_dir: Path | None = None, seed: int = 0) -> Path:
    """Save a tiny random Idefics3ForConditionalGeneration plus a working processor; returns out_dir.

    With `processor_dir` (the real SmolVLM-256M files) the token ids match SmolVLM exactly
    (vocab 49280, `<image>` = 49190, 64 image tokens per tile); without it, a small tokenizer
    is trained here so that nothing needs the network.
    """
    import torch
    from transformers import AutoProcessor, Idefics3Config, Idefics3ForConditionalGeneration

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if processor_dir is not None:
        for name in SMOLVLM_FILES:
            shutil.copyfile(Path(processor_dir) / name, out_dir / name)
        source = f"real SmolVLM-256M-Instruct files from {processor_dir}"
    else:
        _write_trained_processor(out_dir)
        source = "a small BPE tokenizer trained locally (ids do not match SmolVLM)"
    processor = AutoProcessor.from_pretrained(out_dir)
    tok = processor.tokenizer
    # 512-px tile, 32-px patches -> 16x16 = 256 patches; pixel shuffle by 2 -> 64 image tokens.
    config = Idefics3Config(
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=512, patch_size=32),
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.convert_tokens_to_ids("<end_of_utterance>"),
                         pad_token_id=tok.pad_token_id),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    _mark_tiny(out_dir, "teacher (Idefics3, SmolVLM architecture)", source)
    return out_dir


def _write_trained_processor(out_dir: Path) -> None:
    """Train a small byte-level BPE tokenizer and save it with an Idefics3 image processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Idefics3ImageProcessor, Idefics3Processor, PreTrainedTokenizerFast

    from pipeline.classes import SYNONYMS

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>", "<image>",
               "<fake_token_around_image>", "<global-img>"]
    special += [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    corpus = [f"A photo of a {w}. There is a {w} in this image." for ws in SYNONYMS.values() for w in ws]
    corpus += ["User: Can you describe this image? Assistant: The image shows"] * 4
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>",
        additional_special_tokens=special[3:],
    )
    image_processor = Idefics3ImageProcessor(max_image_size={"longest_edge": 512},
                                             size={"longest_edge": 2048})
    processor = Idefics3Processor(image_processor, fast, image_seq_len=IMAGE_SEQ_LEN,
                                  chat_template=SMOLVLM_CHAT_TEMPLATE)
    processor.save_pretrained(out_dir)


def find_phi3_tokenizer_dir() -> Path:
    """The shared Phi-3 tokenizer folder when present, else the copy under tests/assets."""
    for cand in (REPO_ROOT.parent / "shared" / "models" / "Phi-3-mini-4k-instruct",
                 REPO_ROOT / "tests" / "assets" / "phi3_tokenizer"):
        if all((cand / f).is_file() for f in PHI3_TOKENIZER_FILES):
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
        max_position_embeddings=4096, initializer_range=init_std, pad_token_id=32000, bos_token_id=1,
        eos_token_id=32000,
    )
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config.eos_token_id = [32000, 32007]  # <|endoftext|>, <|end|> as in Phi-3
    model.save_pretrained(out_dir)
    src = Path(tokenizer_dir) if tokenizer_dir else find_phi3_tokenizer_dir()
    for name in PHI3_TOKENIZER_FILES:
        shutil.copyfile(src / name, out_dir / name)
    return out_dir


def build_tiny_student(out_dir: Path, *, tokenizer_dir: Path | None = None, seed: int = 0) -> Path:
    """Save a tiny random Phi3ForCausalLM with the Phi-3 tokenizer (vocab 32064); returns out_dir."""
    src = Path(tokenizer_dir) if tokenizer_dir else find_phi3_tokenizer_dir()
    build_tiny_phi3(Path(out_dir), tokenizer_dir=src, seed=seed)
    _mark_tiny(Path(out_dir), "student base (Phi3ForCausalLM)", f"real Phi-3 tokenizer from {src}")
    return Path(out_dir)


def tiny_model_info(path: str | Path) -> dict:
    """What a tiny folder is (for display): {"tiny": bool, "label": str, "config": {...}}."""
    path = Path(path)
    info = {"tiny": is_tiny_model(path), "label": TINY_LABEL if is_tiny_model(path) else ""}
    cfg = path / "config.json"
    if cfg.is_file():
        info["architectures"] = json.loads(cfg.read_text()).get("architectures", [])
    return info
