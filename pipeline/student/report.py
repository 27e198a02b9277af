"""Evaluation artefacts: evaluation.json, predictions.jsonl, report.md and chart.png."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.classes import CLASSES
from pipeline.student.metrics import BLEU_LABEL


def write_report(out_dir: Path, *, result: dict, items: list, predictions: dict[str, list[str]]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    with (out_dir / "predictions.jsonl").open("w") as f:
        for i, it in enumerate(items):
            row = {"item_id": it.item_id, "label": it.label, "references": list(it.references)}
            row.update({cond: preds[i] for cond, preds in predictions.items()})
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out_dir / "report.md").write_text(render_markdown(result, items, predictions))
    plot_chart(result, out_dir / "chart.png")


def render_markdown(result: dict, items: list, predictions: dict[str, list[str]]) -> str:
    conds = list(result["conditions"])
    lines = [f"# Student evaluation: {result.get('source', '')}", "",
             f"{result['n_items']} items; generation {json.dumps(result['generation'])}.", "",
             "Controls: `blank` gives every item a uniform grey image, `shuffled` gives each "
             "caption another item's image. A student that uses the image scores clearly "
             "higher on `real`.", "",
             f"| condition | class mention | {BLEU_LABEL} | ROUGE-L | CIDEr |", "|---|---:|---:|---:|---:|"]
    for c in conds:
        m = result["conditions"][c]
        lines.append(f"| {c} | {m['class_mention']['accuracy']:.1%} | {m['bleu']:.1f} | "
                     f"{m['rouge_l']:.3f} | {m['cider']:.3f} |")
    lines += ["", "## Class-mention accuracy per class", "",
              "| class | " + " | ".join(conds) + " |", "|---|" + "---:|" * len(conds)]
    for cls in CLASSES:
        vals = [result["conditions"][c]["class_mention"]["per_class"].get(cls) for c in conds]
        if any(v is not None for v in vals):
            lines.append(f"| {cls} | " + " | ".join("-" if v is None else f"{v:.0%}" for v in vals) + " |")
    lines += ["", "## Examples", "", "| label | reference | " + " | ".join(conds) + " |",
              "|---|---|" + "---|" * len(conds)]
    for i, it in enumerate(items[:12]):
        cells = [predictions[c][i].replace("|", "/") for c in conds]
        lines.append(f"| {it.label} | {it.references[0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_chart(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = list(result["conditions"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 2.2]})
    width = 0.8 / len(conds)
    for k, c in enumerate(conds):
        m = result["conditions"][c]
        vals = [m["class_mention"]["accuracy"], m["bleu"] / 100, m["rouge_l"]]  # all on 0-1
        ax1.bar([i + k * width for i in range(len(vals))], vals, width, label=c)
        per = m["class_mention"]["per_class"]
        ax2.bar([i + k * width for i in range(len(CLASSES))], [per.get(x, 0.0) for x in CLASSES], width, label=c)
    ax1.set_xticks([i + width for i in range(3)], ["class mention", "BLEU / 100", "ROUGE-L"])
    ax1.set_ylim(0, 1), ax1.legend(fontsize=8), ax1.set_title("overall")
    ax2.set_xticks([i + width for i in range(len(CLASSES))], CLASSES, rotation=30, fontsize=8)
    ax2.set_ylim(0, 1), ax2.set_title("class mention per class")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
