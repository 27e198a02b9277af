"""Service behind the Export page: the balance check, writing a snapshot, past snapshots, zip download."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from sqlalchemy.engine import Engine

from pipeline.data.export import (
    BalanceReport,
    ExportError,
    ExportSummary,
    balance_report,
    export_snapshot,
    list_exports,
    zip_snapshot,
)
from pipeline.identity import Actor, Role, require
from pipeline.settings import Settings

__all__ = ["ExportView", "export_view", "run_export", "zip_snapshot"]


@dataclass(frozen=True)
class ExportView:
    balance: BalanceReport
    balance_table: pd.DataFrame  # label, approved, target, share (of the target, at most 1)
    snapshots: list[ExportSummary]


def export_view(settings: Settings, engine: Engine) -> ExportView:
    """The balance check now and every snapshot written so far (newest first)."""
    balance = balance_report(settings, engine)
    target = balance.target_per_class
    rows = [{"label": k, "approved": v, "target": target, "share": min(v / target, 1.0) if target else 1.0}
            for k, v in balance.counts.items()]
    table = pd.DataFrame(rows, columns=["label", "approved", "target", "share"])
    return ExportView(balance=balance, balance_table=table, snapshots=list_exports(settings, engine))


def run_export(settings: Settings, engine: Engine, *, actor: Actor, override_balance: bool,
               include_weak: bool = False) -> tuple[bool, str]:
    """Write a snapshot now, recorded as exported by `actor`; (ok, message) — a balance or empty-store
    refusal is a message, a role that may not export raises PermissionDenied. `include_weak` adds the
    pending teacher drafts as a separate weak split."""
    require(actor, Role.curator, "export a snapshot")
    try:
        result = export_snapshot(settings, engine, override_balance=override_balance, exported_by=actor.name,
                                 include_weak=include_weak)
    except ExportError as err:
        return False, str(err)
    weak = f" plus {result.n_weak} unreviewed teacher drafts in the separate weak split" if include_weak else ""
    return True, (f"Snapshot {result.snapshot_id} written: {result.n_items} pairs "
                  f"({result.split_counts.get('train', 0)} train, {result.split_counts.get('validation', 0)} "
                  f"validation){weak} at {result.path}.")
