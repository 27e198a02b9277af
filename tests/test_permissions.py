"""The permission matrix: every role (and a signed-in user with no role yet) tries every service
function that changes state, on a real store. Allowed: the change happens and is recorded under
the actor's name. Refused: PermissionDenied, and the store, the exports and the guidelines file
are exactly as before.

    viewer    read only
    reviewer  + review decisions, undo of their own decisions, blind second reviews
    curator   + jobs, export, train, batch compare, send back to review, guidelines, QC policy, adjudication
    admin     + users, deleting snapshots
"""
from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import select

from db import qc as qc_store
from db.engine import init_store, make_engine, session_scope
from db.jobs import create_job, get_job
from db.models import (
    Adjudication,
    Image,
    Job,
    JobKind,
    OpinionState,
    QcPolicyRow,
    Review,
    ReviewAction,
    ReviewEvent,
    ReviewState,
    SecondOpinion,
    SnapshotRecordRow,
    User,
    Verdict,
)
from db.review import decide, events_for_image, get_item
from db.users import add_user, get_user
from pipeline.data.export import export_snapshot, list_exports
from pipeline.identity import Actor, PermissionDenied, Role, require
from pipeline.services import auth, compare, export, guidelines, jobs, lineage, qc, review, train
from pipeline.student.config import StudentConfig, TrainConfig
from tests.conftest import seed_images

ROLES = [None, Role.viewer, Role.reviewer, Role.curator, Role.admin]


@dataclass
class World:
    settings: object
    engine: object
    ids: list[int]
    spawned: list[int]

    def job(self, job_id: int) -> Job:
        with session_scope(self.engine) as s:
            return get_job(s, job_id=job_id)

    def review(self, image_id: int) -> Review:
        with session_scope(self.engine) as s:
            return s.get(Review, image_id)

    def decide_as(self, name: str, image_id: int, action: ReviewAction = ReviewAction.approve) -> None:
        with session_scope(self.engine) as s:
            item = get_item(s, image_id=image_id)
            decide(s, image_id=image_id, reviewer=name, action=action, expected_version=item.version,
                   caption=item.draft_text if action == ReviewAction.approve else None)

    def spawned_job(self, job_id: int) -> Job:
        """A job the service started as a process: stop that process (the test only needs the row)."""
        job = self.job(job_id)
        self.spawned.append(job.pid)
        return job


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, list[int]]:
    """One migrated, seeded store; each test works on a copy of its file (90 migrations would be slow)."""
    data = tmp_path_factory.mktemp("template")
    engine = init_store(f"sqlite:///{data / 'studio.db'}")
    ids = seed_images(engine, {"cat": 2, "dog": 2})
    with session_scope(engine) as s:
        add_user(s, name="zed", role=Role.reviewer.value, password_hash=auth.HASHER.hash("zed's old password"))
    engine.dispose()
    return data / "studio.db", ids


@pytest.fixture
def world(settings, template):
    db_file, ids = template
    Path(settings.data_dir).mkdir(parents=True)
    shutil.copy(db_file, Path(settings.data_dir) / "studio.db")
    engine = make_engine(settings.resolved_database_url)
    w = World(settings=settings, engine=engine, ids=ids, spawned=[])
    yield w
    engine.dispose()
    for pid in w.spawned:
        try:
            os.killpg(pid, signal.SIGTERM)  # start_job gives each job process its own session
        except ProcessLookupError:
            pass


def fingerprint(w: World) -> tuple:
    """Everything a refused call could have changed."""
    with session_scope(w.engine) as s:
        counts = tuple(s.exec(select(func.count()).select_from(t)).one()
                       for t in (Image, ReviewEvent, Job, SnapshotRecordRow, User, SecondOpinion, QcPolicyRow))
        reviews = tuple((r.image_id, r.state, r.reviewer, r.claimed_by, r.version)
                        for r in s.exec(select(Review).order_by(Review.image_id)))
        job_flags = tuple((j.id, j.cancel_requested) for j in s.exec(select(Job).order_by(Job.id)))
        users = tuple((u.name, u.role, u.disabled, u.password_hash) for u in s.exec(select(User).order_by(User.id)))
        opinions = tuple((o.id, o.state, o.second_reviewer, o.claimed_by, o.version)
                         for o in s.exec(select(SecondOpinion).order_by(SecondOpinion.id)))
    files = tuple(sorted(str(p) for p in Path(w.settings.data_dir).rglob("*")
                         if p.is_file() and "studio.db" not in p.name))
    return counts, reviews, job_flags, users, opinions, files


# Each case: (least role, setup → (call, check)). `call(actor)` runs the service function; `check(actor,
# result)` asserts the change an allowed call made, with the actor's name where one is recorded.
Case = Callable[[World, Actor], tuple[Callable, Callable]]


def _open_review(w, a):
    spec = review.QueueSpec(target_per_class=1)

    def check(actor, view):
        assert view.item is not None and w.review(view.item.image_id).claimed_by == actor.name
    return (lambda actor: review.open_review(w.engine, actor=actor, spec=spec)), check


def _submit_decision(w, a):
    image_id = w.ids[0]

    def call(actor):
        return review.submit_decision(w.engine, actor=actor, spec=review.QueueSpec(), image_id=image_id,
                                      expected_version=1, action=ReviewAction.approve, caption="A cat photo 0.")

    def check(actor, view):
        row = w.review(image_id)
        assert view.ok and (row.state, row.reviewer) == (ReviewState.approved, actor.name)
    return call, check


def _undo(w, a):
    image_id = w.ids[1]
    w.decide_as(a.name, image_id, ReviewAction.skip)

    def check(actor, view):
        assert view.ok and w.review(image_id).state == ReviewState.pending
        with session_scope(w.engine) as s:
            skip, undone = events_for_image(s, image_id=image_id)
        assert skip.undone and (undone.action, undone.reviewer) == (ReviewAction.undo, actor.name)
    return (lambda actor: review.undo(w.engine, actor=actor, spec=review.QueueSpec())), check


def _start_caption_job(w, a):
    def call(actor):
        return jobs.start_caption_job(w.settings, w.engine, actor=actor, source="bundled", n_per_class=3)

    def check(actor, started):
        job = w.spawned_job(started.job_id)
        assert started.ok and job.params["started_by"] == actor.name and job.params["imported"] == 30
    return call, check


def _queued_job(w, kind):
    with session_scope(w.engine) as s:
        return create_job(s, kind=kind, params={}).id


def _cancel_job(w, a):
    job_id = _queued_job(w, JobKind.caption)
    return (lambda actor: jobs.cancel_job(w.engine, actor=actor, job_id=job_id)), \
        (lambda actor, msg: w.job(job_id).cancel_requested or pytest.fail(msg))


def _approve_two(w):
    for image_id in w.ids[:2]:
        w.decide_as("ann", image_id)


def _run_export(w, a):
    _approve_two(w)

    def check(actor, result):
        ok, message = result
        [snap] = list_exports(w.settings, w.engine)
        assert ok and snap.exported_by == actor.name and snap.n_items == 2, message
    return (lambda actor: export.run_export(w.settings, w.engine, actor=actor, override_balance=True)), check


def _start_training(w, a):
    def call(actor):
        return train.start_training(w.settings, w.engine, actor=actor, snapshot_id="snap-missing", name="s1",
                                    student=StudentConfig(base_model="x"), train=TrainConfig())

    def check(actor, started):  # past the role check, refused for its input: no such snapshot
        assert not started.ok and "not in the store" in started.message
    return call, check


def _resume_training(w, a):
    job_id = _queued_job(w, JobKind.caption)

    def check(actor, started):  # past the role check: the job is not a training job
        assert not started.ok and started.message == f"No training job {job_id}."
    return (lambda actor: train.resume_training(w.settings, w.engine, actor=actor, job_id=job_id)), check


def _cancel_training(w, a):
    job_id = _queued_job(w, JobKind.train)
    return (lambda actor: train.cancel_training(w.engine, actor=actor, job_id=job_id)), \
        (lambda actor, msg: w.job(job_id).cancel_requested or pytest.fail(msg))


def _start_evaluation(w, a):
    def call(actor):
        return train.start_evaluation(w.settings, actor=actor, student_dir=str(w.settings.data_dir / "none"),
                                      snapshot_path=str(w.settings.data_dir / "none"))
    return call, lambda actor, job_id: w.spawned_job(job_id).params["started_by"] == actor.name or pytest.fail()


def _start_compare(w, a):
    def call(actor):
        return compare.start_compare(w.settings, actor=actor, student_dir=str(w.settings.data_dir / "none"),
                                     snapshot="snap-missing")
    return call, lambda actor, job_id: w.spawned_job(job_id).params["started_by"] == actor.name or pytest.fail()


def _send_back(w, a):
    _approve_two(w)
    image_id = w.ids[0]

    def check(actor, result):
        assert result.reopened == [image_id] and w.review(image_id).state == ReviewState.pending
        with session_scope(w.engine) as s:
            last = events_for_image(s, image_id=image_id)[-1]
        assert (last.action, last.reviewer) == (ReviewAction.reopen, actor.name)
    return (lambda actor: compare.send_back(w.engine, actor=actor, image_ids=[image_id])), check


def _write_guidelines(w, a):
    def check(actor, path):
        assert guidelines.read_guidelines(w.settings) == "Be brief." and Path(path).is_file()
    return (lambda actor: guidelines.write_guidelines(w.settings, actor=actor, text="Be brief.")), check


def _delete_snapshot(w, a):
    _approve_two(w)
    snap = export_snapshot(w.settings, w.engine, override_balance=True)

    def check(actor, result):
        assert result[0] and not Path(snap.path).exists() and list_exports(w.settings, w.engine) == []
    return (lambda actor: lineage.delete_snapshot(w.settings, w.engine, actor=actor, snapshot_id=snap.snapshot_id)), \
        check


def _user_row(w, name):
    with session_scope(w.engine) as s:
        return get_user(s, name=name)


def _add_account(w, a):
    def check(actor, message):
        assert _user_row(w, "newcomer").role == Role.reviewer.value
    return (lambda actor: auth.add_account(w.engine, actor=actor, name="newcomer", role=Role.reviewer,
                                           password="a long enough password")), check


def _change_role(w, a):
    return (lambda actor: auth.change_role(w.engine, actor=actor, name="zed", role=Role.curator)), \
        (lambda actor, message: _user_row(w, "zed").role == "curator" or pytest.fail(message))


def _disable_account(w, a):
    return (lambda actor: auth.disable_account(w.engine, actor=actor, name="zed")), \
        (lambda actor, message: _user_row(w, "zed").disabled or pytest.fail(message))


def _reset_password(w, a):
    def check(actor, message):
        assert auth.sign_in(w.settings, w.engine, name="zed", password="zed's new password").ok
    return (lambda actor: auth.reset_password(w.engine, actor=actor, name="zed", password="zed's new password")), \
        check


ALL = qc_store.QcPolicy(enabled=True, sample_fraction=1.0)


def _routed(w) -> SecondOpinion:
    """ann approved the first item and QC routed it to a second review."""
    w.decide_as("ann", w.ids[0])
    with session_scope(w.engine) as s:
        qc_store.set_policy(s, policy=ALL, curator="cur")
        return qc_store.route_decision(s, image_id=w.ids[0], policy=ALL)


def _opinion(w, opinion_id) -> SecondOpinion:
    with session_scope(w.engine) as s:
        return s.get(SecondOpinion, opinion_id)


def _open_second_review(w, a):
    opinion = _routed(w)
    return (lambda actor: qc.open_second_review(w.engine, actor=actor)), \
        (lambda actor, view: view.item.opinion_id == opinion.id and _opinion(w, opinion.id).claimed_by == actor.name
         or pytest.fail())


def _submit_second_opinion(w, a):
    opinion = _routed(w)

    def call(actor):
        return qc.submit_second_opinion(w.engine, actor=actor, opinion_id=opinion.id,
                                        expected_version=opinion.version, verdict=Verdict.approve)

    def check(actor, view):
        row = _opinion(w, opinion.id)
        assert view.ok and (row.second_reviewer, row.state) == (actor.name, OpinionState.agreed), view.message
    return call, check


def _set_qc_policy(w, a):
    def check(actor, result):
        with session_scope(w.engine) as s:
            row = s.get(QcPolicyRow, 1)
        assert result[0] and (row.enabled, row.sample_fraction, row.updated_by) == (True, 0.3, actor.name)
    return (lambda actor: qc.set_policy(w.engine, actor=actor, enabled=True, sample_fraction=0.3,
                                        route_edited=False)), check


def _route_existing(w, a):
    w.decide_as("ann", w.ids[1])
    with session_scope(w.engine) as s:
        qc_store.set_policy(s, policy=ALL, curator="cur")

    def check(actor, result):
        with session_scope(w.engine) as s:
            assert result[0] and s.exec(select(SecondOpinion.image_id)).all() == [w.ids[1]]
    return (lambda actor: qc.route_existing(w.settings, w.engine, actor=actor)), check


def _settle(w, a):
    opinion = _routed(w)
    with session_scope(w.engine) as s:
        opinion = qc_store.decide_second(s, opinion_id=opinion.id, reviewer="bob", verdict=Verdict.reject,
                                         expected_version=opinion.version, reason="too_vague")

    def call(actor):
        return qc.settle(w.engine, actor=actor, opinion_id=opinion.id, expected_version=opinion.version,
                         choice=Adjudication.second)

    def check(actor, result):
        assert result[0] and w.review(w.ids[0]).state == ReviewState.rejected
        with session_scope(w.engine) as s:
            last = events_for_image(s, image_id=w.ids[0])[-1]
        assert (last.action, last.reviewer) == (ReviewAction.adjudicate, actor.name)
    return call, check


CASES: dict[str, tuple[Role, Case]] = {
    "review.open_review": (Role.reviewer, _open_review),
    "review.submit_decision": (Role.reviewer, _submit_decision),
    "review.undo": (Role.reviewer, _undo),
    "qc.open_second_review": (Role.reviewer, _open_second_review),
    "qc.submit_second_opinion": (Role.reviewer, _submit_second_opinion),
    "qc.set_policy": (Role.curator, _set_qc_policy),
    "qc.route_existing": (Role.curator, _route_existing),
    "qc.settle": (Role.curator, _settle),
    "jobs.start_caption_job": (Role.curator, _start_caption_job),
    "jobs.cancel_job": (Role.curator, _cancel_job),
    "export.run_export": (Role.curator, _run_export),
    "train.start_training": (Role.curator, _start_training),
    "train.resume_training": (Role.curator, _resume_training),
    "train.cancel_training": (Role.curator, _cancel_training),
    "train.start_evaluation": (Role.curator, _start_evaluation),
    "compare.start_compare": (Role.curator, _start_compare),
    "compare.send_back": (Role.curator, _send_back),
    "guidelines.write_guidelines": (Role.curator, _write_guidelines),
    "lineage.delete_snapshot": (Role.admin, _delete_snapshot),
    "auth.add_account": (Role.admin, _add_account),
    "auth.change_role": (Role.admin, _change_role),
    "auth.disable_account": (Role.admin, _disable_account),
    "auth.reset_password": (Role.admin, _reset_password),
}


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value if r else "no-role")
@pytest.mark.parametrize("name", list(CASES))
def test_permission_matrix(world, name, role):
    needed, case = CASES[name]
    actor = Actor(name=f"{role.value if role else 'nobody'}-1", role=role)
    call, check = case(world, actor)
    allowed = role is not None and role.rank >= needed.rank
    if allowed:
        check(actor, call(actor))
        return
    before = fingerprint(world)
    with pytest.raises(PermissionDenied, match=f"needs the {needed.value} role"):
        call(actor)
    assert fingerprint(world) == before


def test_the_matrix_covers_every_role_and_enough_cases():
    assert len(CASES) * len(ROLES) >= 30
    assert {needed for needed, _ in CASES.values()} == {Role.reviewer, Role.curator, Role.admin}


def test_signed_out_and_unknown_are_refused_with_a_message():
    with pytest.raises(PermissionDenied, match="Sign in to export"):
        require(None, Role.viewer, "export")
    with pytest.raises(PermissionDenied, match=r"ann \(no role yet\) may not review"):
        require(Actor("ann", None), Role.reviewer, "review")
