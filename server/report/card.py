"""The model card: the report's facts in Markdown, for a registry or a repository."""

from __future__ import annotations

from common.metrics import METRIC_KEYS
from server.report.content import ReportContent


def render_card(c: ReportContent) -> str:
    m = c.metrics
    lines = [
        f"# Model card: {c.run_id}",
        "",
        "## Model",
        f"- Multi-modal transformer (cross-modal attention over {', '.join(c.modalities)}), "
        f"{c.kind} training, strategy `{c.lineage.get('strategy')}`, selected at "
        f"{'round' if c.kind == 'federated' else 'epoch'} {c.lineage.get('model_round')}.",
        f"- Classes: {', '.join(c.label_names)}.",
        "- Intended use: research on multi-omics subtype classification; not for clinical "
        "decisions.",
        "",
        "## Data",
        f"- Sites: {len(c.sites)}; test split: {m['n']} patients ({c.test_source}).",
        "- Test patients per class: "
        + ", ".join(f"{k} {c.test_counts.get(k, 0)}" for k in c.label_names) + ".",
        "",
        "## Performance on the test split",
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {_f(m[k])} |" for k in METRIC_KEYS),
        "",
        "| class | support | precision | recall | F1 | ROC AUC |",
        "|---|---|---|---|---|---|",
        *(f"| {k} | {v['support']} | {_f(v['precision'])} | {_f(v['recall'])} | "
          f"{_f(v['f1'])} | {_f(c.roc.get(k, {}).get('roc_auc', float('nan')))} |"
          for k, v in m["per_class"].items()),
        "",
        "## Fairness",
        f"Balanced accuracy per group; groups under {c.fairness[0].min_size if c.fairness else 0}"
        " patients are too small to judge.",
        "",
    ]
    for b in c.fairness:
        gap = (f"gap {_f(b.gap)} (best {b.best}, worst {b.worst})" if b.gap is not None
               else "no gap (fewer than two groups large enough)")
        lines.append(f"- **{b.by}**: {gap}. " + "; ".join(
            f"{g.group} {_f(g.balanced_accuracy)} (n={g.n})"
            + ("" if g.judged else f" too small to judge (n={g.n})") for g in b.groups))
    lines += ["", "## Privacy", *_privacy_lines(c), "", "## Explanations",
              f"Integrated gradients, completeness within "
              f"{c.explanations.max_completeness_gap:.1e}. Top features per class (sign: "
              "+ pushes towards the class; high/low: the class's mean value against the "
              "average training patient):"]
    for cls in c.explanations.classes:
        top = ", ".join(f"{f.feature} ({'+' if f.mean_attribution >= 0 else '-'}, "
                        f"{'high' if f.mean_value >= 0 else 'low'})" for f in cls.top_features[:5])
        lines.append(f"- {cls.label} (n={cls.n_patients}): {top or 'no test patient'}")
    lines += ["", "## Lineage", f"- Run id: {c.run_id}",
              f"- Schema SHA-256: {c.lineage.get('schema_sha256')}",
              f"- Test patient ids SHA-256: {c.lineage.get('test_ids_sha256')}",
              "- Data fingerprints (SHA-256):"]
    for directory, files in c.lineage["data_fingerprints"].items():
        lines += [f"  - `{directory}`"] + [f"    - {n}: `{d}`" for n, d in files.items()]
    lines += ["", "## Limitations", *(f"- {n}" for n in c.notes),
              "- Subgroups smaller than the minimum size are reported but not judged."]
    return "\n".join(lines) + "\n"


def _privacy_lines(c: ReportContent) -> list[str]:
    p = c.privacy
    if p.mode == "none":
        return ["- No differential privacy (epsilon: none, no formal guarantee)."]
    lines = [f"- Mechanism: {'local DP-SGD at every site' if p.mode == 'local' else 'central DP'}"
             f"; budget epsilon {p.budget_epsilon:g}; delta {p.delta:g}; "
             f"SecAgg+ {'on' if p.secagg else 'off'}."]
    if p.per_site_epsilon:
        lines.append("- Epsilon spent per site: " + ", ".join(
            f"{s} {e:.3f}" for s, e in sorted(p.per_site_epsilon.items())))
    if p.central:
        lines.append(f"- Central DP record: {p.central}")
    return lines


def _f(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}"
