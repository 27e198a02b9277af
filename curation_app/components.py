"""Widgets shared by the pages: pixel-crisp image, word diff, flags, progress, guidelines.

Captions are user and model text: they are only ever shown through st.text, st.code,
st.text_area or st.dataframe (displayed literally), never through Markdown or HTML. Where such text
goes into a Markdown context (messages, captions, labels), `md_escape` turns it into literal text;
the guidelines (meant to be formatted) go through `safe_guidelines`: no links, images or raw HTML.
"""
from __future__ import annotations

import streamlit as st

from db.models import RejectReason
from pipeline.identity import Actor, PermissionDenied, Role
from pipeline.markup import md_escape as md_escape  # the one escape the pages use
from pipeline.markup import safe_guidelines
from pipeline.services.guidelines import read_guidelines, write_guidelines
from pipeline.services.health import StoreDamage
from pipeline.services.overview import Progress
from pipeline.services.review import REJECT_REASON_TEXT, DiffOp, flag_choices, upscale_png, word_diff
from pipeline.settings import Settings

_DIFF_MARK = {DiffOp.equal: "  ", DiffOp.removed: "- ", DiffOp.added: "+ "}


def pixel_image(png: bytes, *, size: int = 320, caption: str | None = None) -> None:
    """The image enlarged with nearest-neighbour so its 32×32 pixels stay sharp."""
    st.image(upscale_png(png, size=size), width=size, caption=md_escape(caption) if caption else None)


def diff_view(before: str, after: str) -> None:
    """Word diff of the draft against the edit: '-' words removed, '+' words added."""
    lines = [_DIFF_MARK[op] + words for op, words in word_diff(before, after)]
    st.code("\n".join(lines) or "(no words)", language="diff", wrap_lines=True)


def flag_badges(flags: tuple[str, ...] | list[str]) -> None:
    labels = flag_choices()
    if not flags:
        st.badge("No auto-flags", color="green", icon=":material/check:")
        return
    for f in flags:
        st.badge(md_escape(labels.get(f, f)), color="orange", icon=":material/flag:")


def progress_panel(progress: Progress, *, per_class: bool = True) -> None:
    """Approved pairs toward the target, overall and per class."""
    frac = min(progress.approved / progress.target, 1.0) if progress.target else 0.0
    st.progress(frac, text=f"{progress.approved} / {progress.target} approved toward the target")
    if per_class:
        df = progress.per_class
        df = df.assign(done=(df.approved / df.target.where(df.target > 0)).clip(upper=1).fillna(0))
        st.dataframe(
            df[["label", "approved", "target", "done", "pending"]], hide_index=True,
            column_config={"done": st.column_config.ProgressColumn("progress", min_value=0, max_value=1)},
        )


def guidelines_panel(settings: Settings, actor: Actor) -> None:
    """The reviewing guidelines (editable by curators, saved to the guidelines file) and the reject reasons."""
    with st.expander("Guidelines and reject reasons", icon=":material/menu_book:"):
        text = read_guidelines(settings)
        st.markdown(safe_guidelines(text))  # formatted, but no links, images or raw HTML
        st.markdown("**Reject reasons**")
        for reason in RejectReason:
            st.text(f"• {REJECT_REASON_TEXT[reason]}")
        if not actor.can(Role.curator):
            return
        with st.popover("Edit guidelines"):
            new = st.text_area("Guidelines (Markdown)", value=text, height=240, key="guidelines_text")
            if st.button("Save guidelines", key="guidelines_save"):
                try:
                    st.success(md_escape(f"Saved to {write_guidelines(settings, actor=actor, text=new)}"))
                except PermissionDenied as err:
                    st.error(md_escape(str(err)))


def reason_label(reason: RejectReason) -> str:
    return REJECT_REASON_TEXT[reason].split(":", 1)[0]


def damage_page(damage: StoreDamage) -> None:
    """The one page a damaged store gets: what is wrong, the last good backup, what to do; then stop."""
    st.title("The store is damaged")
    st.error(f"{damage.headline}, so no page is shown: decisions made now could be lost.",
             icon=":material/report:")
    st.subheader("What is wrong")
    st.code(f"{damage.store}\n{damage.problem}", language=None, wrap_lines=True)
    st.subheader("Last good backup")
    st.text(str(damage.backup) if damage.backup else "None found.")
    st.subheader("What to do")
    for n, step in enumerate(damage.steps, start=1):
        st.text(f"{n}. {step}")
    st.stop()
