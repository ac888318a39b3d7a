"""The report page: one self-contained HTML file (inline CSS, images as data URIs, no
script, no network)."""

from __future__ import annotations

import json
from html import escape

import numpy as np

from common.metrics import METRIC_KEYS
from server.report.content import ReportContent
from server.report.fairness import Breakdown

SECTIONS = {"data": "Data and split", "curves": "Training curves",
            "performance": "Test performance", "embeddings": "Patient embeddings",
            "modalities": "Modality weights and attention",
            "explanations": "Top features per class", "fairness": "Fairness",
            "privacy": "Privacy", "comparison": "Comparison", "lineage": "Lineage"}
METRIC_TITLES = dict(zip(METRIC_KEYS, ("accuracy", "balanced accuracy", "macro-F1",
                                       "weighted F1", "AUC (one-vs-rest)"), strict=True))
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;
color:#222}h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}td,th{border:1px solid #ddd;
padding:.25em .55em;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child
{text-align:left}img{max-width:100%}.flag{color:#a33;font-weight:600}.note{color:#555;
font-size:.9em}nav a{margin-right:.8em}pre{background:#f6f6f6;padding:.6em;overflow:auto;
font-size:.8em}"""


def render_html(c: ReportContent) -> str:
    body = [f"<h1>Run report: {escape(c.run_id)}</h1>", _summary(c),
            "<nav>" + "".join(f'<a href="#{k}">{escape(t)}</a>' for k, t in SECTIONS.items())
            + "</nav>"]
    for key, render in _RENDERERS.items():
        body.append(f'<section id="{key}"><h2>{escape(SECTIONS[key])}</h2>'
                    f"{render(c)}</section>")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Run report {escape(c.run_id)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>")


def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    cells = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>"
                    for row in rows)
    return f"<table><tr>{head}</tr>{cells}</table>"


class Markup(str):
    """Text that is already HTML (not escaped again)."""


def _cell(value: object) -> str:
    if isinstance(value, float | np.floating):
        return "n/a" if not np.isfinite(value) else f"{value:.3f}"
    return value if isinstance(value, Markup) else escape(str(value))


def _img(c: ReportContent, key: str, alt: str) -> str:
    uri = c.figures.get(key)
    return f'<p><img src="{uri}" alt="{escape(alt)}"></p>' if uri else ""


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _summary(c: ReportContent) -> str:
    m = c.metrics
    return _note(f"{c.kind} run in {c.run_dir}; report written {c.created} in "
                 f"{c.seconds:.1f} s. Test split: {m['n']} patients ({c.test_source}); "
                 f"macro-F1 {m['f1_macro']:.3f}, accuracy {m['accuracy']:.3f}, "
                 f"AUC {m['roc_auc_ovr']:.3f}. Time per stage: "
                 + ", ".join(f"{k} {v:.1f} s" for k, v in c.timings.items()) + ".")


def _data(c: ReportContent) -> str:
    rows = [[s["site"], s.get("n_train", 0), s.get("n_val", 0),
             *(s.get("class_counts", {}).get(k, 0) for k in c.label_names),
             c.test_sites.get(s["site"], 0)] for s in c.sites]
    out = _table(["site", "train", "val", *c.label_names, "test"], rows) if rows else ""
    out += _note(f"Test split: {c.test_source}; per class "
                 + ", ".join(f"{k} {c.test_counts.get(k, 0)}" for k in c.label_names) + ".")
    if c.dropped_sites:
        out += _note("Sites left out (too small even merged): " + json.dumps(c.dropped_sites))
    return out + _img(c, "class_mix", "class mix per site")


def _curves(c: ReportContent) -> str:
    best = c.recorded_metrics.get("best_round") or c.recorded_metrics.get("best_epoch")
    return (_note(f"Selected model: {'round' if c.kind == 'federated' else 'epoch'} {best} "
                  "(highest pooled validation macro-F1). Thin lines: each site's own "
                  "validation macro-F1; thick: pooled validation (dashed) and test (solid).")
            + (_img(c, "curves", "per-round curves") or _note("No per-round record.")))


def _performance(c: ReportContent) -> str:
    m = c.metrics
    out = _table(["metric", "test (recomputed)", "metrics.json"],
                 [[METRIC_TITLES[k], m[k], c.recorded_metrics.get(k, float("nan"))]
                  for k in METRIC_KEYS])
    rows = [[k, v["support"], v["precision"], v["recall"], v["f1"],
             c.roc.get(k, {}).get("roc_auc", float("nan")),
             c.roc.get(k, {}).get("average_precision", float("nan"))]
            for k, v in m["per_class"].items()]
    out += _table(["class", "support", "precision", "recall", "F1", "ROC AUC",
                   "average precision"], rows)
    return out + _img(c, "roc_pr", "ROC and precision-recall") + _img(c, "confusion",
                                                                      "confusion matrix")


def _embeddings(c: ReportContent) -> str:
    return (_note("t-SNE and UMAP of the patient embedding the classification head reads "
                  "(the modality-fused vector), test patients, coloured by true subtype and "
                  "by site.") + _img(c, "tsne", "t-SNE of patient embeddings")
            + _img(c, "umap", "UMAP of patient embeddings")
            + "".join(_note(n) for n in c.notes))


def _modalities(c: ReportContent) -> str:
    rows = [[m, c.learned_modality_weights[m], c.mean_fusion_weights.get(m, float("nan"))]
            for m in c.modalities]
    out = _table(["modality", "learned weight (all present)", "mean weight over test patients"],
                 rows)
    out += _img(c, "modality_weights", "modality weights") + _img(c, "attention", "attention")
    return out + _note(
        "Attention: mean over test patients, heads and blocks of the attention from each "
        "modality's tokens (rows) to each modality's tokens (columns); rows sum to 1. "
        f"Recomputation check against the model's own output: max difference "
        f"{c.attention_check:.1e}.")


def _explanations(c: ReportContent) -> str:
    e = c.explanations
    out = _note(f"Integrated gradients (Captum, {e.steps} Gauss-Legendre steps, baseline = "
                "the average training patient) of each class's probability, over that "
                "class's test patients; ranked by mean |attribution|. Sign: + pushes "
                "towards the class. 'value' is the class's mean standardized value "
                "(+ = higher than the average training patient). Completeness: attributions "
                f"sum to p(patient) - p(baseline) within {e.max_completeness_gap:.1e} "
                f"(largest probability change {e.max_probability_change:.3f}).")
    for cls in e.classes:
        rows = [[f.feature, f.modality, f.mean_abs_attribution, f.mean_attribution,
                 f.mean_value] for f in cls.top_features]
        out += f"<h3>{escape(cls.label)} (n={cls.n_patients})</h3>"
        out += _table(["feature", "modality", "mean |attribution|", "mean attribution",
                       "value"], rows) if rows else _note("No test patient of this class.")
    return out + _img(c, "ig_modality", "attribution share per modality")


def _fairness(c: ReportContent) -> str:
    out = _note(f"Metrics on the test split per group. Groups under {c.fairness[0].min_size} "
                "patients are flagged too small to judge and left out of the gap."
                if c.fairness else "No grouping available.")
    for b in c.fairness:
        out += f"<h3>by {escape(b.by)}</h3>" + _breakdown(b)
    return out


def _breakdown(b: Breakdown) -> str:
    rows = [[g.group, g.n, g.accuracy, g.balanced_accuracy, g.f1_macro,
             "" if g.judged else Markup(f'<span class="flag">too small to judge (n={g.n})</span>')]
            for g in b.groups]
    out = _table(["group", "n", "accuracy", "balanced accuracy", "macro-F1", "flag"], rows)
    if b.gap is None:
        return out + _note("Fewer than two groups large enough to judge: no gap.")
    return out + _note(f"Gap in {b.metric.replace('_', ' ')}: {b.gap:.3f} "
                       f"(best {b.best}, worst {b.worst}).")


def _privacy(c: ReportContent) -> str:
    p = c.privacy
    if p.mode == "none":
        out = _note("No differential privacy: the model carries no formal privacy guarantee.")
    elif p.mode == "local":
        out = _note(f"Local DP at every site (each release carries the site's whole noise; "
                    f"Opacus DP-SGD for models other than the class centroids): budget epsilon "
                    f"{p.budget_epsilon:g} per site, delta {p.delta:g} (0 = 1e-5), per-sample "
                    f"clipping {p.max_grad_norm:g}.")
    else:
        out = _note(f"Central DP at the coordinator: run budget epsilon {p.budget_epsilon:g}, "
                    f"site updates clipped to {p.max_grad_norm:g}.")
    if p.per_site_epsilon:
        out += _table(["site", "epsilon spent"], sorted(p.per_site_epsilon.items()))
    if p.central:
        out += "<pre>" + escape(json.dumps(p.central, indent=1)) + "</pre>"
    return out + _note("Secure aggregation (SecAgg+): " + ("on." if p.secagg else "off."))


def _comparison(c: ReportContent) -> str:
    rows = [[f"this model ({c.kind})", *(c.metrics[k] for k in METRIC_KEYS)]]
    rows += [[name, *(m[k] for k in METRIC_KEYS)] for name, m in c.comparison.items()]
    out = _table(["model", *(METRIC_TITLES[k] for k in METRIC_KEYS)], rows)
    return out + ("" if c.comparison else _note("The run recorded no comparison."))


def _lineage(c: ReportContent) -> str:
    lin = c.lineage
    match = lin["fingerprints_match_now"]
    state = {True: "the data read for this report match them", False:
             "THE DATA CHANGED since the run", None: "none recorded"}[match]
    rows = [[directory, name, digest] for directory, files in
            lin["data_fingerprints"].items() for name, digest in files.items()]
    out = _table(["directory", "file", "SHA-256"], rows) + _note(f"Data fingerprints: {state}.")
    out += _table(["item", "value"], [[k, v] for k, v in lin.items()
                                      if k not in ("data_fingerprints", "data_origin")])
    return out + "<pre>" + escape(json.dumps(c.config, indent=1)) + "</pre>"


_RENDERERS = {"data": _data, "curves": _curves, "performance": _performance,
              "embeddings": _embeddings, "modalities": _modalities,
              "explanations": _explanations, "fairness": _fairness, "privacy": _privacy,
              "comparison": _comparison, "lineage": _lineage}
