"""The student's parts: class matching, patches, prompt layout, label alignment, adapters."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from pipeline.classes import CLASSES, mentioned_classes, mentions_class
from pipeline.student.config import GenerationConfig, StudentConfig, TrainConfig
from pipeline.student.model import IGNORE_INDEX, build_example, collate, patchify
from tests.conftest_student import TINY_STUDENT, cifar20_records


def test_class_mentions_use_word_boundaries_synonyms_and_plurals():
    assert len(CLASSES) == 10 and CLASSES[0] == "airplane" and CLASSES[-1] == "truck"
    assert mentioned_classes("Two JETS fly over a parked car.") == {"airplane", "automobile"}
    assert mentions_class("puppies playing with kittens", "dog")
    assert mentions_class("a flock of geese", "bird")
    assert not mentions_class("a catalog of cattle", "cat")
    assert mentioned_classes("") == set()
    with pytest.raises(ValueError):
        mentions_class("a cat", "lion")


def test_patchify_raster_order_and_counts():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    for p, n in ((4, 64), (8, 16)):
        patches = patchify(x, patch_size=p)
        assert patches.shape == (2, n, 3 * p * p)
        assert StudentConfig(patch_size=p).n_patches == n
    p = patchify(x, patch_size=8)
    # patch 1 is the second 8x8 block of the first row: channel 0, row 0, cols 8..15
    assert torch.equal(p[0, 1, :8], x[0, 0, 0, 8:16])


def test_configs_reject_contradictions():
    with pytest.raises(ValueError):
        StudentConfig(patch_size=5)
    with pytest.raises(ValueError):
        TrainConfig(dtype="float16")
    with pytest.raises(ValueError):
        GenerationConfig(top_p=0.0)
    with pytest.raises(ValueError):
        TrainConfig(epochs=0, max_steps=0)


@pytest.fixture(scope="module")
def fresh_student(tiny_phi3):
    from pipeline.student.loader import build_student

    torch.manual_seed(0)
    return build_student(StudentConfig(base_model=str(tiny_phi3), **TINY_STUDENT), dtype=torch.float32)


def test_four_bit_base_with_adapters_on_phi3_modules(fresh_student):
    import bitsandbytes as bnb

    lm = fresh_student.lm
    for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
        mods = [m for n, m in lm.named_modules() if n.endswith(name) and hasattr(m, "lora_A")]
        assert len(mods) == 2  # one per layer of the tiny model
        assert isinstance(mods[0].base_layer, bnb.nn.Linear4bit)
        assert mods[0].base_layer.weight.quant_state.quant_type == "nf4"
    trainable = {n for n, p in fresh_student.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("projector.") for n in trainable)


def test_prompt_holds_one_placeholder_per_patch_and_labels_cover_caption_and_end(fresh_student):
    s = fresh_student
    ids = s.layout.prompt_ids
    assert ids.count(s.layout.image_token_id) == 64
    assert s.tokenizer.convert_ids_to_tokens(ids[-1]) == "<|assistant|>"
    inp, lab = build_example(s.tokenizer, s.layout, "a red car.")
    supervised = [t for t in lab if t != IGNORE_INDEX]
    assert s.tokenizer.decode(supervised[:-1]) == "a red car." and supervised[-1] == s.layout.end_id
    assert inp[len(ids):] == supervised  # labels are the inputs themselves; HF shifts them


def test_loss_equals_cross_entropy_of_next_caption_token(fresh_student):
    """Student.forward (LM head only on caption positions) == full-sequence shifted CE."""
    s = fresh_student
    recs = cifar20_records()[:3]
    batch = collate([build_example(s.tokenizer, s.layout, r.text) for r in recs],
                    pad_id=s.tokenizer.pad_token_id)
    pixels = s.pixels([r.image() for r in recs])
    with torch.no_grad():
        loss = s(pixels=pixels, **batch)
        logits = s.lm(inputs_embeds=s.embed(batch["input_ids"], pixels),
                      attention_mask=batch["attention_mask"]).logits
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                            batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    assert torch.allclose(loss, ref, atol=1e-4)


def test_image_embeddings_replace_only_placeholders(fresh_student):
    s = fresh_student
    ids = torch.tensor([s.layout.prompt_ids])
    a = s.embed(ids, s.pixels([Image.new("RGB", (32, 32), (0, 0, 0))]))
    b = s.embed(ids, s.pixels([Image.new("RGB", (32, 32), (255, 255, 255))]))
    differs = (a - b).abs().sum(-1)[0] > 0
    assert torch.equal(differs, ids[0] == s.layout.image_token_id)


def test_gradient_checkpointing_gives_the_same_gradients(fresh_student):
    s = fresh_student
    recs = cifar20_records()[:2]
    batch = collate([build_example(s.tokenizer, s.layout, r.text) for r in recs], pad_id=s.tokenizer.pad_token_id)
    batch["pixels"] = s.pixels([r.image() for r in recs])
    s.train()
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            s.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        s.zero_grad(set_to_none=True)
        s(**batch).backward()
        grads.append(s.projector.mlp[0].weight.grad.clone())
    s.lm.gradient_checkpointing_disable()
    s.zero_grad(set_to_none=True)
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)
