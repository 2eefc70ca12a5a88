"""The self-contained HTML report of a workspace (``camlabel report -w WS``).

One file, ``WS/reports/index.html``: every picture is embedded as a data URI, there is no
script, font or stylesheet from outside, so it opens offline and can be mailed around. It
collects what the loop left in the workspace:

- the ledger (states, rounds, annotator agreement, effort telemetry);
- ``runs.jsonl`` (one row per push/pull round, versions and settings of every run);
- ``reports/classifier/metrics.json`` + curves + confusion matrix (``camlabel evaluate``);
- Grad-CAM overlays (``heatmaps/<id>.png``) with their polygons;
- annotated masks beside the U-Net's predictions (``reports/predict/<id>.json``);
- ``reports/audit.json`` + its worst-case grid (``camlabel audit``);
- ``reports/summary.json`` (the demo's headline figures: pointing game, pre-annotation IoU,
  held-out lesion Dice).

Sections whose inputs are missing say so instead of disappearing.
"""

from __future__ import annotations

import base64
import html
import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from camlabel.records import ImageRecord
from camlabel.workspace import Workspace

MAX_GALLERY = 12

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#1d2430;padding:0 1rem}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #e3e8ef;padding-bottom:.3rem;margin-top:2.4rem}
.sub{color:#5b6677;margin-top:0}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
th,td{border:1px solid #d9dfe7;padding:.3rem .6rem;text-align:right}th{background:#f3f6fa}
td:first-child,th:first-child{text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin:1rem 0}
.card{background:#f6f8fb;border:1px solid #e1e6ee;border-radius:8px;padding:.7rem 1rem;min-width:170px}
.card .v{font-size:1.6rem;font-weight:600}.card .k{color:#5b6677;font-size:.85rem}
.good{color:#0a7a3f}.bad{color:#b42318}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:.8rem}
figure{margin:0;background:#fafbfc;border:1px solid #e3e8ef;border-radius:6px;padding:.4rem}
figure img{width:100%;image-rendering:auto;border-radius:4px}
figcaption{font-size:.8rem;color:#4a5565;margin-top:.3rem;word-break:break-all}
.pair{display:flex;gap:.3rem}.pair img{width:50%}
.missing{color:#8a94a6;font-style:italic}
code{background:#f3f6fa;padding:0 .25rem;border-radius:3px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return _e(x)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def data_uri(path: Path, mime: str = "image/png") -> str | None:
    if not path.is_file():
        return None
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def png_uri(array: Any) -> str:
    """Encode an image array (gray, BGR) as a PNG data URI."""
    import cv2

    ok, buf = cv2.imencode(".png", array)
    if not ok:  # pragma: no cover - cv2 encodes any uint8 array
        raise ValueError("could not encode image")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _img(uri: str | None, alt: str) -> str:
    if uri is None:
        return f'<p class="missing">{_e(alt)}: not available</p>'
    return f'<img src="{uri}" alt="{_e(alt)}">'


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _card(key: str, value: str, cls: str = "") -> str:
    return (
        f'<div class="card"><div class="v {cls}">{value}</div><div class="k">{_e(key)}</div></div>'
    )


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# --------------------------------------------------------------------------- sections
def _headline(ws: Workspace, recs: list[ImageRecord]) -> str:
    from camlabel.loop import workspace_status

    st = workspace_status(ws)
    summary = _load_json(ws.dir("reports") / "summary.json") or {}
    cards = [
        _card("images", str(st["images"])),
        _card("tasks pushed", str(sum(b["tasks"] for b in st["backends"].values()))),
        _card("masks", str(st["masks"]["count"])),
        _card("pre-annotations accepted unchanged", _pct(st["effort"]["accepted_unchanged_share"])),
        _card("pre-annotation vs final IoU", _fmt(st["effort"]["preannotation_iou_mean"])),
        _card("annotator agreement (Dice)", _fmt(st["masks"]["agreement_dice_mean"])),
    ]
    if "pointing_game_hit_rate" in summary:
        cards.append(
            _card("Grad-CAM pointing game (hit rate)", _pct(summary["pointing_game_hit_rate"]))
        )
    refined = summary.get("pointing_game_refined") or {}
    if refined.get("rate") is not None:
        cards.append(
            _card("pointing game, CAM pooled over its refined regions", _pct(refined["rate"]))
        )
    if "heldout_lesion_dice" in summary:
        d = summary["heldout_lesion_dice"]
        goal = summary.get("dice_goal", 0.92)
        cls = "good" if d is not None and d >= goal else "bad"
        cards.append(
            _card(
                f"U-Net lesion Dice in the lung field, held-out phantoms (goal ≥ {goal})",
                _fmt(d),
                cls,
            )
        )
        whole = summary.get("heldout_lesion_dice_without_lung_field")
        if whole is not None:
            cards.append(_card("U-Net lesion Dice, whole image (held-out)", _fmt(whole)))
    if "classifier_accuracy" in summary:
        cards.append(_card("classifier accuracy (held-out)", _fmt(summary["classifier_accuracy"])))
    rows = [(k, v) for k, v in st["states"].items()]
    return (
        '<section id="summary"><h2>Summary</h2><div class="cards">'
        + "".join(cards)
        + "</div>"
        + _table(["state", "images"], rows)
        + "</section>"
    )


def _rounds(ws: Workspace) -> str:
    runs = [r for r in ws.ledger.runs() if r.get("kind") in ("push-jobs", "pull-masks")]
    rows = []
    for i, r in enumerate(runs, 1):
        res = r.get("result", {})
        s = r.get("settings", {})
        if r["kind"] == "push-jobs":
            rows.append(
                (
                    i,
                    r.get("recorded_at", ""),
                    "push",
                    s.get("backend"),
                    res.get("pushed"),
                    res.get("already_present"),
                    "–",
                    "–",
                    "–",
                )
            )
        else:
            rows.append(
                (
                    i,
                    r.get("recorded_at", ""),
                    "pull",
                    s.get("backend"),
                    res.get("tasks"),
                    "–",
                    res.get("new_annotations"),
                    res.get("masks_written"),
                    f"{res.get('skipped', 0)} skipped / {res.get('unannotated', 0)} open",
                )
            )
    if not rows:
        return '<section id="rounds"><h2>Labeling rounds</h2><p class="missing">No push or pull yet.</p></section>'
    return (
        '<section id="rounds"><h2>Labeling rounds</h2>'
        + _table(
            [
                "#",
                "when",
                "step",
                "backend",
                "tasks",
                "already present",
                "new annotations",
                "masks written",
                "not masked",
            ],
            rows,
        )
        + "</section>"
    )


#: the effort charts: file name under reports/effort/, caption
EFFORT_PLOTS = (
    ("preannotation_iou.png", "pre-annotation vs final-mask IoU per round"),
    ("shares.png", "accepted unchanged, IoU >= 0.8 and held-out U-Net Dice per round"),
    ("edited_area.png", "edited area |pre XOR final| / |final| per round"),
    ("lead_time.png", "annotation lead time per round (s)"),
)


def effort_plots(ws: Workspace, recs: list[ImageRecord]) -> list[Path]:
    """Draw :data:`EFFORT_PLOTS` into ``reports/effort/`` from the ledger (rounds as in
    ``status --json``) and, when the demo recorded it, the held-out U-Net Dice after each
    round (``summary.json``'s ``rounds``). Returns the files written (none without rounds)."""
    from camlabel.loop import round_samples
    from camlabel.plots import bar_chart, box_plot, save_png

    samples = round_samples(ws, recs)
    if not samples:
        return []
    summary = _load_json(ws.dir("reports") / "summary.json") or {}
    held = {
        k: (v or {}).get("heldout_lesion_dice") for k, v in (summary.get("rounds") or {}).items()
    }
    names = {k: f"round {k}" for k in samples}
    shares: dict[str, dict[str, float | None]] = {}
    for key, smp in samples.items():
        ious, acc = smp["preannotation_iou"], smp["accepted_unchanged"]
        shares[names[key]] = {
            "accepted unchanged": sum(acc) / len(acc) if acc else None,
            "pre-annotation IoU >= 0.8": sum(v >= 0.8 for v in ious) / len(ious) if ious else None,
            **({"held-out U-Net Dice": held.get(key)} if held else {}),
        }
    charts = {
        "preannotation_iou.png": box_plot(
            {names[k]: v["preannotation_iou"] for k, v in samples.items()},
            title="pre-annotation vs final-mask IoU",
            limits=(0.0, 1.0),
        ),
        "shares.png": bar_chart(shares, title="effort and model quality per round"),
        "edited_area.png": box_plot(
            {names[k]: v["edited_area"] for k, v in samples.items()},
            title="edited area |pre XOR final| / |final|",
        ),
        "lead_time.png": box_plot(
            {names[k]: v["lead_time_s"] for k, v in samples.items()},
            title="lead time per annotation (s)",
        ),
    }
    out = ws.dir("reports") / "effort"
    return [save_png(out / name, charts[name]) for name, _ in EFFORT_PLOTS]


def _effort_plots(ws: Workspace, recs: list[ImageRecord]) -> str:
    files = effort_plots(ws, recs)
    if not files:
        return ""
    figs = [
        f"<figure>{_img(data_uri(f), cap)}<figcaption>{_e(cap)}</figcaption></figure>"
        for f, (_, cap) in zip(files, EFFORT_PLOTS, strict=True)
    ]
    return (
        '<section id="effort-rounds"><h2>Effort per round</h2>'
        "<p>Does the work get easier as the model learns? Per labeling round: how close the "
        "pre-annotations came to the final masks, how often annotators accepted them "
        "unchanged, how much they edited, how long they took, and the held-out Dice of the "
        "U-Net trained after the round.</p>"
        '<div class="grid">' + "".join(figs) + "</div></section>"
    )


def _effort(recs: list[ImageRecord]) -> str:
    rows = []
    for r in recs:
        sub = [a for a in r.annotations if a.status == "submitted"]
        if not sub:
            continue
        rows.append(
            (
                r.image_id[:12],
                r.label or "–",
                len(sub),
                ", ".join("yes" if a.accepted_unchanged else "no" for a in sub),
                statistics.fmean(
                    [a.lead_time_s for a in sub if a.lead_time_s is not None] or [0.0]
                ),
                r.mask.preannotation_iou if r.mask else None,
                r.mask.agreement_dice if r.mask else None,
            )
        )
    if not rows:
        return '<section id="effort"><h2>Annotation effort and agreement</h2><p class="missing">No annotations pulled yet.</p></section>'
    return (
        '<section id="effort"><h2>Annotation effort and agreement</h2>'
        "<p>Per annotated image: whether each annotator accepted the pre-annotation unchanged, "
        "lead time, IoU between the pre-annotation and the final mask, and the annotators' "
        "pairwise Dice where several annotated.</p>"
        + _table(
            [
                "image",
                "label",
                "annotators",
                "accepted unchanged",
                "lead time (s)",
                "pre-annotation IoU",
                "agreement Dice",
            ],
            rows[:200],
        )
        + "</section>"
    )


def _classifier(ws: Workspace) -> str:
    base = ws.dir("reports") / "classifier"
    m = _load_json(base / "metrics.json")
    if m is None:
        return '<section id="classifier"><h2>Classifier</h2><p class="missing">No evaluation yet (camlabel evaluate MODEL DATA --out WS/reports/classifier).</p></section>'
    parts = ['<section id="classifier"><h2>Classifier</h2>']
    parts.append('<div class="cards">')
    for key in ("accuracy", "macro_f1", "macro_auc"):
        if key in m:
            parts.append(_card(key.replace("_", " "), _fmt(m[key])))
    parts.append("</div>")
    per = m.get("per_class") or {}
    if per:
        rows = [
            (c, v.get("precision"), v.get("recall"), v.get("f1"), v.get("auc"), v.get("support"))
            for c, v in per.items()
        ]
        parts.append(_table(["class", "precision", "recall", "F1", "ROC AUC", "support"], rows))
    figs = []
    for name, cap in (
        ("confusion_matrix.png", "confusion matrix"),
        ("curves.png", "training curves"),
    ):
        uri = data_uri(base / name)
        if uri:
            figs.append(f"<figure>{_img(uri, cap)}<figcaption>{_e(cap)}</figcaption></figure>")
    if figs:
        parts.append('<div class="grid">' + "".join(figs) + "</div>")
    parts.append("</section>")
    return "".join(parts)


def _gradcam(ws: Workspace, recs: list[ImageRecord]) -> str:
    with_cam = [r for r in recs if r.heatmap is not None]
    if not with_cam:
        return '<section id="gradcam"><h2>Grad-CAM pre-annotations</h2><p class="missing">No heatmaps yet.</p></section>'
    figs = []
    for r in sorted(with_cam, key=lambda r: (r.preannotation is None, r.image_id))[:MAX_GALLERY]:
        assert r.heatmap is not None
        uri = data_uri(ws.abs(r.heatmap.overlay_path))
        pred = r.prediction
        cap = f"{r.image_id[:10]} · true {r.label or '?'} · predicted {pred.predicted_class if pred else '?'}"
        if pred:
            cap += f" ({pred.probability:.2f})"
        cap += f" · {len(r.preannotation.polygons) if r.preannotation else 0} polygon(s) · {r.heatmap.method}"
        figs.append(
            f"<figure>{_img(uri, 'Grad-CAM overlay')}<figcaption>{_e(cap)}</figcaption></figure>"
        )
    return (
        '<section id="gradcam"><h2>Grad-CAM pre-annotations</h2>'
        f"<p>{len(with_cam)} heatmap(s); overlays show the fused CAM and the polygons offered to annotators.</p>"
        '<div class="grid">' + "".join(figs) + "</div></section>"
    )


def _masks_vs_predictions(ws: Workspace, recs: list[ImageRecord]) -> str:
    import cv2
    import numpy as np

    from camlabel.imaging import overlay_mask, read_mask_png

    pred_dir = ws.dir("reports") / "predict"
    masked = [r for r in recs if r.mask is not None]
    figs = []
    for r in masked[:MAX_GALLERY]:
        assert r.mask is not None
        disp = cv2.imread(str(ws.abs(r.display_path)), cv2.IMREAD_GRAYSCALE)
        if disp is None:
            continue
        ann = overlay_mask(disp, read_mask_png(ws.abs(r.mask.path)), color=(0, 200, 0))
        pj = _load_json(pred_dir / f"{r.image_id}.json")
        right = None
        cap = f"{r.image_id[:10]} · mask v{r.mask.version} ({r.mask.consensus})"
        if pj and pj.get("mask_path") and Path(pj["mask_path"]).is_file():
            pm = read_mask_png(Path(pj["mask_path"]))
            right = png_uri(overlay_mask(disp, pm, color=(0, 0, 230)))
            cap += f" · U-Net Dice {_fmt(_dice(read_mask_png(ws.abs(r.mask.path)), pm))}"
        figs.append(
            f'<figure><div class="pair">{_img(png_uri(ann), "annotated mask")}{_img(right, "U-Net prediction")}</div>'
            f"<figcaption>{_e(cap)}</figcaption></figure>"
        )
    heldout = _load_json(ws.dir("reports") / "heldout.json") or []
    hfigs = []
    for item in heldout[:MAX_GALLERY]:
        uri = data_uri(Path(item.get("overlay_path", "")))
        cap = f"{item.get('name', '')} · true {item.get('label')} · predicted {item.get('predicted_class')}"
        if item.get("dice") is not None:
            cap += f" · lesion Dice {item['dice']:.3f}"
        hfigs.append(
            f"<figure>{_img(uri, 'prediction overlay')}<figcaption>{_e(cap)}</figcaption></figure>"
        )
    if not figs and not hfigs:
        return '<section id="masks"><h2>Masks and U-Net predictions</h2><p class="missing">No masks yet.</p></section>'
    out = ['<section id="masks"><h2>Masks and U-Net predictions</h2>']
    if figs:
        out.append(
            "<p>Left: the annotators' consensus mask (green). Right: the U-Net's prediction (red) where one was made.</p>"
        )
        out.append('<div class="grid">' + "".join(figs) + "</div>")
    if hfigs:
        dices = [h["dice"] for h in heldout if h.get("dice") is not None]
        out.append(
            f"<h3>Held-out images (camlabel predict)</h3><p>{len(heldout)} image(s); mean lesion Dice "
            f"{_fmt(float(np.mean(dices)) if dices else None)} over the lesion images.</p>"
        )
        out.append('<div class="grid">' + "".join(hfigs) + "</div>")
    out.append("</section>")
    return "".join(out)


def _dice(a: Any, b: Any) -> float:
    from camlabel.consensus import dice

    return dice(a, b)


def _audit(ws: Workspace) -> str:
    a = _load_json(ws.dir("reports") / "audit.json")
    if a is None:
        return '<section id="audit"><h2>Shortcut audit</h2><p class="missing">No audit yet (camlabel audit MODEL DATA --lung-masks DIR --out WS/reports).</p></section>'
    overall = a.get("overall", a)
    cards = []
    for key, label in (
        ("mean_lung_energy", "CAM energy inside the lungs (mean)"),
        ("mean_border_energy", "CAM energy in the border band (mean)"),
        ("flagged", "images flagged (CAM mostly outside the lungs)"),
        ("n_images", "images audited"),
    ):
        if key in overall:
            v = overall[key]
            cards.append(_card(label, _pct(v) if isinstance(v, float) else _e(v)))
    grid = data_uri(ws.dir("reports") / "audit_worst.png")
    return (
        '<section id="audit"><h2>Shortcut audit</h2>'
        "<p>Where the classifier looks: a model that decides from markers, borders or anatomy outside "
        "the lungs is using a shortcut, whatever its accuracy.</p>"
        '<div class="cards">'
        + "".join(cards)
        + "</div>"
        + (
            f"<figure>{_img(grid, 'worst cases')}<figcaption>worst cases: least CAM energy inside the lungs</figcaption></figure>"
            if grid
            else ""
        )
        + "</section>"
    )


def _runs(ws: Workspace) -> str:
    runs = ws.ledger.runs()
    if not runs:
        return ""
    rows = []
    for r in runs[-40:]:
        v = r.get("versions", {})
        rows.append(
            (
                r.get("recorded_at", ""),
                r.get("kind", ""),
                v.get("camlabel", ""),
                v.get("tensorflow", v.get("keras", "–")),
                json.dumps(r.get("settings", {}), sort_keys=True)[:160],
            )
        )
    return (
        '<section id="runs"><h2>Runs (versions, seeds, settings)</h2>'
        + _table(["when", "command", "camlabel", "TF / Keras", "settings"], rows)
        + "</section>"
    )


def build_report(ws: Workspace, out: Path | None = None) -> Path:
    """Write the report and return its path (``WS/reports/index.html`` by default)."""
    from camlabel import __version__
    from camlabel.fileio import atomic_write_text
    from camlabel.records import utcnow

    recs = ws.ledger.all()
    out = out or ws.dir("reports") / "index.html"
    body = "".join(
        [
            _headline(ws, recs),
            _rounds(ws),
            _effort_plots(ws, recs),
            _effort(recs),
            _classifier(ws),
            _gradcam(ws, recs),
            _masks_vs_predictions(ws, recs),
            _audit(ws),
            _runs(ws),
        ]
    )
    doc = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>camlabel report — {_e(ws.root.name)}</title><style>{CSS}</style></head><body>"
        f"<h1>camlabel report</h1><p class=sub>workspace <code>{_e(ws.root.name)}</code> · generated {utcnow()} · camlabel {__version__}. "
        "Synthetic or research data; not for clinical use.</p>"
        f"{body}</body></html>"
    )
    atomic_write_text(out, doc)
    return out
