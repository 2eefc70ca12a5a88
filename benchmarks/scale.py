"""Ledger scale: the SQLite ledger against the old JSON Lines ledger, side by side in one run.

Synthetic workspaces of N realistic records, modelled on the annotated line of
``manifests/examples/ledger.example.jsonl`` (prediction, heatmap, pre-annotation polygon,
Label Studio job, two annotations with polygons and telemetry, consensus mask), in a mix of
states (1/10 registered, 1/10 pre-annotated, 4/10 pushed, 1/10 skipped, 2/10 annotated,
1/10 masked). For each size it times, on the new ledger:

- ``status``: ``camlabel status`` (``loop.workspace_status``), best of 3;
- one 32-record commit: a transaction reading and updating 32 random records (median of 20);
- a gradcam-style stream: ``run_gradcam``'s commits (``--stream-batch`` images per commit,
  each ``txn.update`` setting prediction + heatmap) over every image, per image;
- push planning: the ``PushItem`` list ``push-jobs`` builds (pre-annotated rows by index), per image;
- pulling 10k outcomes: the job map ``pull-masks`` passes to the backend, then one
  transaction applying 10k new annotations (get + put per outcome), as ``pull_masks`` does.

The old JSONL ledger (``benchmarks/legacy_jsonl_ledger.py``, today's code before SQLite) is
timed the same way at ``--old-size`` only: its stream is O(N^2) (every commit parses and
rewrites the whole file), so it is timed on the first ``--old-stream-commits`` commits and
reported per image of that prefix (the full stream costs N/batch times one commit).

Usage:
    .venv/bin/python benchmarks/scale.py [--sizes 10000,100000,1000000] [--old-size 10000]
        [--stream-batch 8] [--dir TMPDIR] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import legacy_jsonl_ledger as legacy  # noqa: E402

from camlabel.ledger import record_line  # noqa: E402
from camlabel.loop import _push_item, workspace_status  # noqa: E402
from camlabel.records import Annotation, Heatmap, ImageRecord, Prediction  # noqa: E402
from camlabel.workspace import Workspace  # noqa: E402

EXAMPLE = ROOT / "manifests" / "examples" / "ledger.example.jsonl"
CHUNK = 10_000


# --------------------------------------------------------------------------- synthetic data
def _template() -> dict[str, Any]:
    return dict(json.loads(EXAMPLE.read_text().splitlines()[1]))


def synthetic_line(tpl: dict[str, Any], i: int) -> dict[str, Any]:
    """Record ``i``: the example's annotated line with its own id, paths, task and state."""
    iid = hashlib.sha256(str(i).encode()).hexdigest()
    d = dict(tpl)
    d["image_id"] = iid
    d["source_path"] = f"/data/cxr/{i:07d}.png"
    d["display_path"] = f"images/{iid}.png"
    d["patient_id"] = f"p{i // 3:07d}"
    d["label"] = ("covid", "pneumonia", "normal")[i % 3]
    d["heatmap"] = {**tpl["heatmap"], "path": f"heatmaps/{iid}.npy"}
    d["heatmap"]["overlay_path"] = f"heatmaps/{iid}.png"
    d["jobs"] = {"labelstudio": {**tpl["jobs"]["labelstudio"], "task": str(1000 + i)}}
    d["annotations"] = [
        {**a, "raster_path": f"annotations/{iid}/labelstudio-{a['annotation_id']}.png"}
        for a in tpl["annotations"]
    ]
    d["mask"] = {**tpl["mask"], "path": f"masks/{iid}-v1.png"}
    kind = i % 10
    if kind in (0, 1):
        d.pop("mask"), d.pop("annotations"), d.pop("jobs")
        if kind == 0:
            d.pop("prediction"), d.pop("heatmap"), d.pop("preannotation")
    elif kind in (2, 3, 4, 5):
        d.pop("mask"), d.pop("annotations")
    elif kind == 6:
        d.pop("mask")
        d["annotations"] = [{**d["annotations"][0], "status": "skipped", "polygons": []}]
    elif kind in (7, 8):
        d.pop("mask")
    return d


def synthetic_records(n: int) -> Iterator[list[ImageRecord]]:
    tpl = _template()
    for start in range(0, n, CHUNK):
        yield [
            ImageRecord.from_json(synthetic_line(tpl, i))
            for i in range(start, min(n, start + CHUNK))
        ]


# --------------------------------------------------------------------------- timing helpers
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of one call, and its result; CPU seconds are added to ``CPU``."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    CPU.append(time.process_time() - c)
    return time.perf_counter() - t, out


#: CPU seconds of the last timed calls (the machine is shared: wall time carries other load)
CPU: list[float] = []


def gradcam_update(rec: ImageRecord) -> ImageRecord:
    pred = Prediction(
        predicted_class="covid",
        probability=0.8,
        probabilities={"covid": 0.8, "normal": 0.1, "pneumonia": 0.1},
        model_version="bench",
    )
    hm = Heatmap(
        path=f"heatmaps/{rec.image_id}.npy",
        overlay_path=f"heatmaps/{rec.image_id}.png",
        method="gradcam",
        model_version="bench",
        target_class="covid",
        fusion="normalize-mean",
    )
    return rec.evolve(prediction=pred, heatmap=hm)


def new_annotation(rec: ImageRecord, k: int) -> ImageRecord:
    return rec.with_annotations(
        [
            Annotation(
                backend="labelstudio",
                annotation_id=f"bench-{k}",
                annotator="bench@example.com",
                status="submitted",
                created_at="2026-12-07T00:00:00Z",
                updated_at="2026-12-07T00:00:00Z",
                lead_time_s=12.0,
                accepted_unchanged=True,
                polygons=[{"exterior": [[1.0, 1.0], [9.0, 1.0], [9.0, 9.0]], "holes": []}],
            )
        ]
    )


# --------------------------------------------------------------------------- one ledger
def bench_ledger(
    name: str, ws: Workspace, ledger: Any, ids: list[str], args: argparse.Namespace, *, old: bool
) -> dict[str, Any]:
    n = len(ids)
    rng = random.Random(0)
    out: dict[str, Any] = {"ledger": name, "images": n}

    def status() -> Any:
        if old:
            return legacy.status_by_pass(ledger.all(), ws.root)
        return workspace_status(ws, detail=False)

    reps = 1 if old else 3
    CPU.clear()
    out["status_s"] = min(timed(status)[0] for _ in range(reps))
    out["status_cpu_s"] = min(CPU)

    def commit32() -> None:
        picks = rng.sample(ids, 32)
        with ledger.transaction() as txn:
            for iid in picks:
                txn.update(iid, lambda r: r.evolve(split="val"))

    CPU.clear()
    out["commit32_ms"] = 1e3 * statistics.median(
        timed(commit32)[0] for _ in range(3 if old else 20)
    )
    out["commit32_cpu_ms"] = 1e3 * statistics.median(CPU)

    batch = args.stream_batch
    stream_ids = ids[: batch * args.old_stream_commits] if old else ids
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, len(stream_ids), batch):
        with ledger.transaction() as txn:
            for iid in stream_ids[start : start + batch]:
                txn.update(iid, gradcam_update)
    out["stream_images"] = len(stream_ids)
    out["stream_us_per_image"] = 1e6 * (time.perf_counter() - t0) / len(stream_ids)
    out["stream_cpu_us_per_image"] = 1e6 * (time.process_time() - c0) / len(stream_ids)

    def plan() -> list[Any]:
        if old:
            recs = sorted(ledger.all(), key=lambda r: r.image_id)
            return [_push_item(ws, r, "labelstudio") for r in recs if r.preannotation is not None]
        items = (_push_item(ws, r, "labelstudio") for r in ledger.with_preannotation())
        return sorted(items, key=lambda it: it.image_id)  # as push_jobs does

    CPU.clear()
    dt, items = timed(plan)
    out["push_plan_s"] = dt
    out["push_plan_us_per_image"] = 1e6 * dt / max(1, len(items))
    out["push_plan_cpu_us_per_image"] = 1e6 * CPU[-1] / max(1, len(items))
    del items

    def job_map() -> dict[str, Any]:
        if old:
            return {
                r.image_id: r.jobs["labelstudio"] for r in ledger.all() if "labelstudio" in r.jobs
            }
        return dict(ledger.jobs_for("labelstudio"))

    out["pull_job_map_s"], jobs = timed(job_map)
    pulled = sorted(jobs)[: args.pull]

    def pull() -> None:
        with ledger.transaction() as txn:
            for k, iid in enumerate(pulled):
                rec = txn.get(iid)
                txn.put(new_annotation(rec, k))

    out["pull_outcomes"] = len(pulled)
    CPU.clear()
    out["pull_commit_s"] = timed(pull)[0]
    out["pull_commit_cpu_s"] = CPU[-1]
    out["pull_us_per_outcome"] = 1e6 * out["pull_commit_s"] / max(1, len(pulled))
    return out


def build_new(root: Path, n: int) -> tuple[Workspace, list[str], float]:
    ws = Workspace.init(root)
    ids: list[str] = []
    t = time.perf_counter()
    for chunk in synthetic_records(n):
        ws.ledger.put_many(chunk)
        ids.extend(r.image_id for r in chunk)
    return ws, ids, time.perf_counter() - t


def build_old(root: Path, n: int) -> tuple[Workspace, Any, list[str]]:
    ws = Workspace.init(root)
    path = root / "legacy" / "ledger.jsonl"
    path.parent.mkdir()
    ids: list[str] = []
    with path.open("w", encoding="utf-8") as fh:
        for chunk in synthetic_records(n):
            fh.writelines(record_line(r) + "\n" for r in chunk)
            ids.extend(r.image_id for r in chunk)
    return ws, legacy.Ledger(path), ids


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000", help="new-ledger sizes [10000,100000]")
    ap.add_argument("--old-size", type=int, default=10_000, help="old JSONL ledger size (0: skip)")
    ap.add_argument("--old-stream-commits", type=int, default=10)
    ap.add_argument("--stream-batch", type=int, default=8, help="images per gradcam commit [8]")
    ap.add_argument("--pull", type=int, default=10_000, help="pull outcomes to commit [10000]")
    ap.add_argument("--dir", type=Path, default=None, help="where to build the workspaces")
    ap.add_argument("--keep", action="store_true", help="keep the workspaces")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    base = Path(tempfile.mkdtemp(prefix="camlabel-scale-", dir=args.dir))
    print(
        f"python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} CPUs, {platform.platform()}; workspaces under {base}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    try:
        if args.old_size:
            ws, led, ids = build_old(base / f"old-{args.old_size}", args.old_size)
            size_mb = led.path.stat().st_size / 1e6
            row = bench_ledger("jsonl (old)", ws, led, ids, args, old=True)
            row["file_mb"] = size_mb
            rows.append(row)
            print(json.dumps(row), flush=True)
        for n in sizes:
            ws, ids, build_s = build_new(base / f"new-{n}", n)
            size_mb = ws.ledger.path.stat().st_size / 1e6
            row = bench_ledger("sqlite", ws, ws.ledger, ids, args, old=False)
            row["file_mb"] = size_mb
            row["build_s"] = build_s
            rows.append(row)
            print(json.dumps(row), flush=True)
            ws.ledger.close()
            if not args.keep:
                shutil.rmtree(ws.root)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    print()
    print("wall time (CPU time of this process in brackets)")
    head = (
        f"{'ledger':12} {'images':>9} {'file MB':>8} {'status s':>15} {'commit32 ms':>15} "
        f"{'stream us/img':>15} {'push plan us/img':>17} {'pull 10k s':>11} {'pull us/outcome':>16}"
    )
    print(head)
    for r in rows:
        print(
            f"{r['ledger']:12} {r['images']:>9} {r['file_mb']:>8.1f} "
            f"{r['status_s']:>6.3f} ({r['status_cpu_s']:6.3f}) "
            f"{r['commit32_ms']:>6.1f} ({r['commit32_cpu_ms']:6.1f}) "
            f"{r['stream_us_per_image']:>6.0f} ({r['stream_cpu_us_per_image']:6.0f}) "
            f"{r['push_plan_us_per_image']:>5.0f} ({r['push_plan_cpu_us_per_image']:5.0f})     "
            f"{r['pull_job_map_s'] + r['pull_commit_s']:>11.2f} "
            f"{r['pull_us_per_outcome']:>16.0f}"
        )
    new = [r for r in rows if r["ledger"] == "sqlite"]
    old = [r for r in rows if r["ledger"] != "sqlite"]
    if new and len(new) > 1:
        a, b = new[0], new[-1]
        print(f"\nper-image cost, {b['images']} vs {a['images']} images (new ledger):")
        for key in (
            "stream_us_per_image",
            "stream_cpu_us_per_image",
            "push_plan_us_per_image",
            "push_plan_cpu_us_per_image",
            "pull_us_per_outcome",
        ):
            print(f"  {key:24} {b[key] / a[key]:.2f}x")
    if old:
        same = [r for r in new if r["images"] == old[0]["images"]]
        if same:
            o, s = old[0], same[0]
            print(f"\nold / new at {o['images']} images:")
            for key in (
                "status_s",
                "commit32_ms",
                "commit32_cpu_ms",
                "stream_us_per_image",
                "stream_cpu_us_per_image",
                "push_plan_us_per_image",
            ):
                print(f"  {key:24} {o[key] / s[key]:.1f}x")
            print(
                f"  {'pull 10k (map + commit)':24} "
                f"{(o['pull_job_map_s'] + o['pull_commit_s']) / (s['pull_job_map_s'] + s['pull_commit_s']):.1f}x"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
