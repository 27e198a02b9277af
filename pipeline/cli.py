"""Command line: `python -m pipeline --help`.

Each command is a typed function (the signature is the CLI); long commands accept
`--job-id` so the app can run them as jobs and watch their progress in the store.
"""
from __future__ import annotations

import typer

app = typer.Typer(
    help="Caption-curation studio: import images, draft captions with the teacher, export, "
    "train and evaluate the student.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Commands are registered from their own modules below (one module per noun).

from pipeline.export_cli import export  # noqa: E402

app.command()(export)
from pipeline.store_cli import build_tiny, caption, import_, init, status  # noqa: E402

app.command()(init)

app.command("build-tiny")(build_tiny)
app.command("import")(import_)
app.command()(caption)
app.command()(status)
from pipeline.compare import compare  # noqa: E402

app.command()(compare)
from pipeline.student.commands import evaluate_command, train_command  # noqa: E402

app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
