"""Command line: `python -m pipeline --help` (or the `capstudio` console script).

Each command is a typed function (the signature is the CLI) in the module of its group; long
commands accept `--job-id` so the app can run them as jobs and watch their progress in the store.
"""
from __future__ import annotations

import typer

from pipeline.cli.compare import compare
from pipeline.cli.db import db_app
from pipeline.cli.errors import FriendlyGroup
from pipeline.cli.export import export
from pipeline.cli.stats import stats
from pipeline.cli.store import build_tiny, caption, import_, init, status
from pipeline.cli.student import evaluate_command, train_command
from pipeline.cli.users import users

app = typer.Typer(
    help="Caption-curation studio: import images, draft captions with the teacher, export, "
    "train and evaluate the student.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    cls=FriendlyGroup,  # a bad setting, a read-only folder, a missing snapshot: one line, exit 2
)
app.command()(init)
app.command("import")(import_)
app.command()(caption)
app.command()(status)
app.command("build-tiny")(build_tiny)
app.command()(export)
app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.command()(compare)
app.command()(stats)
app.add_typer(users, name="users")
app.add_typer(db_app, name="db")
