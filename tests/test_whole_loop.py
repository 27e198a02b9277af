"""The whole loop on tiny real models: import 20 bundled CIFAR-10 images, draft captions with
the teacher, approve 20 in the review queue, export, train the student, evaluate it, and the
playground shows the teacher, approved and student captions for one of those images, where the
student (which memorised its training pairs) writes exactly the approved caption."""
from __future__ import annotations

import json
from dataclasses import replace

from db.catalog import drafts_for_image
from db.engine import init_store, session_scope
from db.models import Image, ReviewAction
from db.review import claim_next, decide
from pipeline.data.export import export_snapshot
from pipeline.data.snapshot import read_snapshot
from pipeline.data.sources import ImportSource, import_images
from pipeline.services.lineage import sync_students
from pipeline.settings import Settings
from pipeline.student.config import TrainConfig
from pipeline.student.evaluate import evaluate, evaluation_dir, items_from_snapshot
from pipeline.student.loader import load_student
from pipeline.student.train import train
from pipeline.teacher.drafting import CaptionRequest, run_captioning
from pipeline.teacher.model import TEACHER_GENERATION, load_teacher
from tests.app_store import app_for
from tests.playground_models import tiny_base, tiny_student_config, tiny_teacher

DRAFT = replace(TEACHER_GENERATION, max_new_tokens=8)  # the playground's defaults below match these


def caption_for(label: str) -> str:
    return f"a photo of a {label}."


def test_import_caption_approve_export_train_evaluate_playground(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    teacher_dir = tiny_teacher(tmp_path / "teacher")
    settings = Settings(data_dir=data, teacher_model=str(teacher_dir), target_per_class=2, _env_file=None)
    engine = init_store(settings.resolved_database_url)

    assert import_images(engine, source=ImportSource.bundled, n_per_class=2, seed=0).added == 20
    teacher = load_teacher(str(teacher_dir))
    assert run_captioning(engine, teacher, CaptionRequest(params=DRAFT, batch_size=1)).written == 20

    approved: dict[int, str] = {}
    while True:
        with session_scope(engine) as s:
            item = claim_next(s, reviewer="ann")
            if item is None:
                break
            decide(s, image_id=item.image_id, reviewer="ann", action=ReviewAction.edit_approve,
                   expected_version=item.version, caption=caption_for(item.label))
            approved[item.image_id] = caption_for(item.label)
    assert len(approved) == 20

    export = export_snapshot(settings, engine, exported_by="ann")
    snap = read_snapshot(export.path)
    assert (len(snap.train), len(snap.validation)) == (10, 10)  # one of each class in each split

    student_dir = settings.students_dir / "loop"
    metrics = train(snapshot_dir=export.path, out_dir=student_dir,
                    student_config=tiny_student_config(tiny_base(tmp_path / "base", init_std=0.5)),
                    train_config=TrainConfig(max_steps=30, batch_size=10, lr_lora=1e-2, lr_projector=1e-2,
                                             warmup_ratio=0.0, checkpoint_every=0),
                    device="cpu", show_progress=False)
    assert metrics["final_train_loss"] < 0.05

    student = load_student(student_dir)
    report = evaluate(student=student, items=items_from_snapshot(export.path, split="validation"),
                      out_dir=evaluation_dir(student_dir, "app"), source="loop")
    assert set(report["conditions"]) == {"real", "blank", "shuffled"}
    [row] = sync_students(settings, engine)
    assert row.snapshot_id == export.snapshot_id and "real_class_mention" in row.metrics

    # the playground, on one training image uploaded as a file
    item = snap.train[0]
    image_id = int(item.item_id)
    with session_scope(engine) as s:
        png = s.get(Image, image_id).png
        draft = drafts_for_image(s, image_id=image_id)[-1].text
    engine.dispose()
    monkeypatch.setenv("CAPSTUDIO_TEACHER_MODEL", str(teacher_dir))
    at = app_for(data, monkeypatch)
    at.run()
    at.switch_page("app_pages/playground.py").run()
    at.radio(key="pg_source").set_value("Upload").run()
    at.file_uploader(key="pg_upload").set_value(("item.png", png, "image/png")).run()
    at.number_input(key="pg_max_new").set_value(DRAFT.max_new_tokens)
    at.button(key="pg_run").click().run(timeout=120)
    assert not at.exception, at.exception
    result = at.session_state["pg_result"]
    shown = [t.value for t in at.text]
    assert result["student"]["text"] == approved[image_id] == item.text  # memorised
    assert result["teacher"]["text"] == draft  # the same teacher, prompt and params as the draft
    for text in (approved[image_id], draft):
        assert text in shown
    assert json.loads((student_dir / "snapshot.json").read_text())["snapshot_id"] == export.snapshot_id
