"""The layering we keep (STYLE.md): db imports nothing of ours, only curation_app imports
streamlit, nothing imports curation_app, and each model family has one from_pretrained site."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def _py(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def test_db_imports_nothing_of_ours():
    for f in _py("db"):
        assert not _imports(f) & {"pipeline", "curation_app"}, f


def test_streamlit_only_in_curation_app():
    # bench/ may drive the app through streamlit.testing (it times the review page); it is
    # never imported by the product.
    for folder in ("db", "pipeline"):
        for f in _py(folder):
            assert "streamlit" not in _imports(f), f


def test_nothing_imports_curation_app():
    for folder in ("db", "pipeline"):
        for f in _py(folder):
            assert "curation_app" not in _imports(f), f


def test_one_from_pretrained_site_per_model_family():
    sites = [f for f in _py("pipeline") if ".from_pretrained(" in f.read_text(encoding="utf-8")]
    rel = sorted(str(f.relative_to(REPO)) for f in sites)
    # teacher family: pipeline/teacher/model.py; student family: pipeline/student/loader.py;
    # tiny builders only load tokenizers/processors to save beside random weights.
    allowed = {"pipeline/teacher/model.py", "pipeline/student/loader.py", "pipeline/tiny.py"}
    assert set(rel) <= allowed, rel
