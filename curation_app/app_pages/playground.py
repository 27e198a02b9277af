"""Playground: caption one image with the teacher and a trained student, side by side with the
approved caption from the store, a word diff, and the timings of each model."""
from __future__ import annotations

import re

import streamlit as st

from curation_app.components import diff_view, md_escape, pixel_image
from curation_app.resources import get_engine, get_settings
from pipeline.services.playground import (
    ModelUnavailable,
    load_playground_student,
    load_playground_teacher,
    no_student_message,
    open_playground,
    student_path,
)
from pipeline.services.streaming import GenerationConfig, stream_student, stream_teacher, teacher_tile

settings, engine = get_settings(), get_engine()
RESULT = "pg_result"
_MD = re.compile(r"([\\`*_{}\[\]<>()#+\-.!|~])")


@st.cache_resource(show_spinner="Loading the teacher…", max_entries=2)
def teacher_model(model: str, device: str):
    return load_playground_teacher(model, device=device)


@st.cache_resource(show_spinner="Loading the student…", max_entries=3)
def student_model(folder: str, cpu_path: str | None):
    return load_playground_student(folder, native_kernels=settings.native_kernels, cpu_path=cpu_path)


def literal(pieces):
    """Model text streamed as Markdown-escaped pieces, so it shows exactly as written."""
    for piece in pieces:
        yield _MD.sub(r"\\\1", piece)


def pick_example(key: str) -> None:
    st.session_state["pg_example"] = key


def run_one(kind: str, image, load, stream_for) -> dict:
    """Load (cached) and stream one model into the current column; a plain-data outcome."""
    try:
        model = load()
    except ModelUnavailable as err:
        st.error(md_escape(str(err)))
        return {"error": str(err)}
    stream = stream_for(model)
    try:
        st.write_stream(literal(stream))
    except (RuntimeError, ValueError) as err:  # e.g. out of memory: a message, not a traceback
        st.error(md_escape(f"The {kind} failed while generating: {err}"))
        return {"error": f"The {kind} failed while generating: {err}"}
    t = stream.timings
    return {"text": stream.text, "ttft": t.ttft_s, "tps": t.tokens_per_s, "total": t.total_s,
            "tokens": t.new_tokens, "tile": teacher_tile(model, image) if kind == "teacher" else None,
            "path": student_path(model) if kind == "student" else None}


def show(kind: str, outcome: dict | None) -> None:
    if not outcome:
        st.caption("Not run.")
    elif "error" in outcome:
        st.error(md_escape(outcome["error"]))
    else:
        st.text(outcome["text"] or "(empty caption)")
        ttft = f"{outcome['ttft']:.2f} s" if outcome["ttft"] is not None else "—"
        st.caption(f"first token {ttft} · {outcome['tps']:.1f} tokens/s · total {outcome['total']:.2f} s "
                   f"· {outcome['tokens']} tokens", help=f"{kind} timings")
        if outcome.get("path"):
            st.caption(md_escape(outcome["path"]), help="how the student's base runs on this machine, and why")


st.title("Playground")
source = st.radio("Input", ["Example", "Upload"], horizontal=True, key="pg_source")
data, name, example = None, "upload", None
if source == "Upload":
    upload = st.file_uploader("Upload an image (PNG, JPEG, WebP, GIF, …)", key="pg_upload")
    if upload is not None:
        data, name = upload.getvalue(), upload.name
else:
    example = st.session_state.setdefault("pg_example", "cat/cat_0000.png")
view = open_playground(settings, engine, data=data, name=name, example=example)

if source == "Example":
    with st.expander("Bundled CIFAR-10 examples (real images)", expanded=True):
        cols = st.columns(10)
        for i, ex in enumerate(view.examples):
            with cols[(i // 2) % 10]:
                pixel_image(ex.png, size=64)
                st.button(ex.label, key=f"ex-{ex.key}", on_click=pick_example, args=(ex.key,),
                          type="primary" if ex.key == example else "secondary")
if view.error:
    st.error(md_escape(view.error))
    st.stop()
if view.input is None:
    st.info("Upload an image, or switch to the bundled examples.")
    st.stop()

inp = view.input
result = st.session_state.get(RESULT) if st.session_state.get(RESULT, {}).get("input") == inp.model_png else None
c1, c2, c3 = st.columns(3)
with c1:
    pixel_image(inp.original_png, size=160, caption=f"{inp.name} · {inp.size[0]}×{inp.size[1]}")
with c2:
    pixel_image(inp.model_png, size=160, caption="what the student receives: 32×32")
with c3:
    tile = ((result or {}).get("teacher") or {}).get("tile")
    if tile is not None:
        st.image(tile, width=160, caption="the teacher's tile (its processor's output)")
    else:
        st.caption("The teacher's 512-px tile appears here once the teacher has run.")
if inp.match:
    st.info(md_escape(f"In the store as item {inp.match.image_id} ({inp.match.label}, {inp.match.state.value})."))

with st.form("pg_form"):
    m1, m2 = st.columns(2)
    use_teacher = m1.checkbox("Teacher", value=True, key="pg_use_teacher", help=view.teacher.label)
    students = {s.label: s.path for s in view.students}
    student = m2.selectbox("Student", list(students), key="pg_student", index=0 if students else None,
                           placeholder="no trained student yet")
    g = st.columns(7)
    max_new = g[0].number_input("Max new tokens", 1, 512, 40, key="pg_max_new")
    sampling = g[1].radio("Decoding", ["greedy", "sampling"], key="pg_decoding") == "sampling"
    temperature = g[2].number_input("Temperature", 0.05, 5.0, 1.0, 0.05, key="pg_temperature")
    top_p = g[3].number_input("Top-p", 0.01, 1.0, 1.0, 0.01, key="pg_top_p")
    top_k = g[4].number_input("Top-k (0: off)", 0, 1000, 0, key="pg_top_k")
    rep = g[5].number_input("Repetition penalty", 0.5, 3.0, 1.1, 0.05, key="pg_rep")
    seed = g[6].number_input("Seed", 0, 2**31 - 1, 0, key="pg_seed")
    run = st.form_submit_button("Run", key="pg_run", type="primary", icon=":material/play_arrow:")
if not students:
    st.info(no_student_message())

cols = st.columns(3)
for col, title in zip(cols, ("Teacher", "Student", "Approved")):
    col.subheader(title)
if run:
    params = GenerationConfig(max_new_tokens=int(max_new), do_sample=sampling, temperature=temperature,
                              top_p=top_p, top_k=int(top_k), repetition_penalty=rep, seed=int(seed))
    image = inp.model_image()
    result = {"input": inp.model_png, "teacher": None, "student": None}
    if use_teacher:
        with cols[0]:
            result["teacher"] = run_one("teacher", image,
                                        lambda: teacher_model(settings.teacher_model, settings.device),
                                        lambda m: stream_teacher(m, image, params))
    if student:
        with cols[1]:
            result["student"] = run_one("student", image, lambda: student_model(students[student], settings.cpu_path),
                                        lambda m: stream_student(m, image, params))
    st.session_state[RESULT] = result
    st.rerun()

result = result or {}
for col, kind in zip(cols, ("teacher", "student")):
    with col:
        show(kind, result.get(kind))
with cols[2]:
    if inp.match and inp.match.approved_caption:
        st.text(inp.match.approved_caption)
        st.caption(md_escape(f"approved by {inp.match.reviewer or '?'} · item {inp.match.image_id}"))
    else:
        st.caption("Not approved in the store." if inp.match else "This image is not in the store.")

texts = {k: (result.get(k) or {}).get("text") for k in ("teacher", "student")}
texts["approved"] = inp.match.approved_caption if inp.match else None
pairs = [(a, b) for a, b in (("teacher", "approved"), ("student", "approved"), ("teacher", "student"))
         if texts[a] is not None and texts[b] is not None]
if pairs:
    st.subheader("Word diff")
    for a, b in pairs:
        st.caption(f"{a} → {b} ('-' only in the {a}, '+' only in the {b})")
        diff_view(texts[a], texts[b])
