"""Benchmark camlabel's Label Studio backend against a real local server.

Measures, on a fresh server started from the cached data-dir template:

1. push: N pre-annotated tasks through ``LabelStudioBackend.push`` (bulk import in chunks,
   after the idempotence listing), and the baseline of one task per request through the SDK
   (``ls.projects.import_tasks`` with a single task, on ``--per-task-sample`` tasks,
   extrapolated to N);
2. pull: N annotated tasks (created fast by a bulk import of tasks that already carry their
   ``annotations``: polygons, and a brush stroke on every 10th) read back by
   ``LabelStudioBackend.pull`` and rasterized to masks at the original resolution; then an
   incremental pull with nothing new;
3. the server's resident memory after each phase;
4. side by side in the same run, the server's own speed on the same tasks: the raw bulk import
   (the same JSON payloads, built beforehand, POSTed to ``/api/projects/{id}/import`` in the
   same chunks, into a fresh project, once before and once after camlabel's push) and the raw
   JSON export (``GET /api/projects/{id}/export?exportType=JSON``, the bytes only, before and
   after camlabel's pull); the ratios are camlabel's time over the mean of the two raw times.

Usage (from the repository root):

    .venv/bin/python benchmarks/labelstudio.py --tasks 10000 --per-task-sample 200
    # the ratios only, PostgreSQL instead of SQLite, cProfile of camlabel's push and pull:
    .venv/bin/python benchmarks/labelstudio.py --tasks 10000 --per-task-sample 0 \
        --database postgresql://USER@127.0.0.1:5432/DB --profile /tmp/ls-prof

Prints a JSON summary and a Markdown table (for docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import json
import os
import platform
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from camlabel.backends.base import PushItem
from camlabel.backends.labelstudio import LabelStudioBackend
from camlabel.backends.labelstudio import server as srv
from camlabel.backends.labelstudio.convert import mask_to_brush_rle
from camlabel.geometry import px_to_pct
from camlabel.records import JobRef, Preannotation
from camlabel.workspace import Workspace


def _polygon(rng: np.random.Generator, w: int, h: int, n: int = 24) -> list[list[float]]:
    """A blob-like polygon of ``n`` vertices (what a CAM contour simplifies to)."""
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    r = rng.uniform(0.08, 0.2) * min(w, h)
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = r * rng.uniform(0.7, 1.3, n)
    return np.round(np.c_[cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 3).tolist()


def _items(ws: Workspace, n: int, w: int, h: int, seed: int) -> list[PushItem]:
    rng = np.random.default_rng(seed)
    images = ws.dir("images")
    out = []
    for i in range(n):
        image_id = hashlib.sha256(f"bench-{seed}-{i}".encode()).hexdigest()
        polys = [{"exterior": _polygon(rng, w, h), "holes": []} for _ in range(2)]
        out.append(
            PushItem(
                image_id=image_id,
                width=w,
                height=h,
                display_png=images / f"{image_id}.png",  # local-files: never read at import
                preannotation=Preannotation(
                    polygons=tuple(polys), source="gradcam", model_version="bench", score=0.8
                ),
                predicted_class="covid",
                probability=0.9,
            )
        )
    return out


@contextlib.contextmanager
def _profiled(out: Path | None, name: str) -> Any:
    """cProfile the block into ``out/name.prof`` (+ a text summary) when ``out`` is set."""
    if out is None:
        yield
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        out.mkdir(parents=True, exist_ok=True)
        prof.dump_stats(out / f"{name}.prof")
        with (out / f"{name}.txt").open("w") as fh:
            stats = pstats.Stats(prof, stream=fh).sort_stats("cumulative")
            stats.print_stats(45)
            stats.sort_stats("tottime").print_stats(25)


def _raw_import(http: Any, pid: int, payloads: list[dict[str, Any]], chunk: int) -> float:
    """Seconds for the server's own bulk import of ``payloads`` (no listing, no building)."""
    t = time.perf_counter()
    for start in range(0, len(payloads), chunk):
        resp = http.post(
            f"/api/projects/{pid}/import",
            params={"return_task_ids": "true"},
            json=payloads[start : start + chunk],
        )
        resp.raise_for_status()
    return time.perf_counter() - t


def _raw_export(http: Any, pid: int) -> tuple[float, int]:
    """Seconds and bytes of the server's own JSON export of every task of ``pid``."""
    t = time.perf_counter()
    resp = http.get(
        f"/api/projects/{pid}/export", params={"exportType": "JSON", "download_all_tasks": "true"}
    )
    resp.raise_for_status()
    return time.perf_counter() - t, len(resp.content)


def _new_project(ws: Workspace, opts: dict[str, Any], title: str) -> tuple[Any, int]:
    ws.config["labelstudio"]["project_title"] = title
    be = LabelStudioBackend(ws, **opts)
    return be, be.ensure_project()


def _rss(pid: int) -> float:
    return (srv.rss_bytes(pid) or 0) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--per-task-sample", type=int, default=200)
    ap.add_argument("--size", type=int, default=512, help="original image width and height (px)")
    ap.add_argument("--chunk-size", type=int, default=500)
    ap.add_argument(
        "--keep", action="store_true", help="keep the temp folder (server data, workspace)"
    )
    ap.add_argument(
        "--database",
        default=None,
        help="postgresql://USER@HOST:PORT/DB (an empty database; password in "
        "CAMLABEL_LS_DB_PASSWORD) instead of SQLite",
    )
    ap.add_argument("--profile", type=Path, default=None, help="write cProfile stats here")
    args = ap.parse_args()

    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="camlabel-bench-ls-"))
    ls_bin = srv.find_ls_bin()
    creds = srv.Credentials.generate()
    db = srv.Database.parse(args.database) if args.database else None
    db_env = db.env(os.environ.get("CAMLABEL_LS_DB_PASSWORD")) if db else None
    t0 = time.perf_counter()
    # Only with --database: the same script also measures a checkout without that option.
    db_kw: dict[str, Any] = (
        {"database": db, "db_password": os.environ.get("CAMLABEL_LS_DB_PASSWORD")} if db else {}
    )
    srv.provision_data_dir(tmp / "data", creds, ls_bin=ls_bin, **db_kw)
    proc = srv.start_server(
        tmp / "data",
        document_root=tmp,
        ls_bin=ls_bin,
        timeout=300,
        **({"extra_env": db_env} if db_env else {}),
    )
    http = httpx.Client(
        base_url=proc.url, headers={"Authorization": f"Token {creds.token}"}, timeout=600
    )
    results: dict[str, Any] = {
        "database": db.url if db else "sqlite",
        "tasks": args.tasks,
        "size_px": args.size,
        "chunk_size": args.chunk_size,
        "label_studio": proc.version,
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPU(s), Python {platform.python_version()}",
        "server_setup_s": round(time.perf_counter() - t0, 1),
        "rss_idle_mib": round(_rss(proc.pid)),
    }
    try:
        ws = Workspace.init(tmp / "ws")
        opts = {
            "url": proc.url,
            "token": creds.token,
            "upload": False,
            "document_root": str(tmp),
            "chunk_size": args.chunk_size,
        }
        w = h = args.size

        # ---------------------------------------------------------------- push (bulk)
        items = _items(ws, args.tasks, w, h, seed=1)
        raw_be, raw_pid = _new_project(ws, opts, "bench-raw-push-1")
        raw_be._ensure_local_storage(raw_pid)
        payloads = [raw_be.task_payload(it, raw_be._local_url(it)) for it in items]
        raw_push_1 = _raw_import(http, raw_pid, payloads, args.chunk_size)
        ws.config["labelstudio"]["project_title"] = "bench-push"
        be = LabelStudioBackend(ws, **opts)
        t = time.perf_counter()
        with _profiled(args.profile, "push"):
            rep = be.push(items, progress=False)
        push_s = time.perf_counter() - t
        assert len(rep.pushed) == args.tasks, (len(rep.pushed), rep.failures)
        raw_be, raw_pid = _new_project(ws, opts, "bench-raw-push-2")
        raw_push_2 = _raw_import(http, raw_pid, payloads, args.chunk_size)
        raw_push_s = (raw_push_1 + raw_push_2) / 2
        results |= {
            "raw_import_s": [round(raw_push_1, 1), round(raw_push_2, 1)],
            "push_over_raw_import": round(push_s / raw_push_s, 2),
        }
        t = time.perf_counter()
        again = LabelStudioBackend(ws, **opts).push(items, progress=False)
        repush_s = time.perf_counter() - t
        assert not again.pushed and len(again.already_present) == args.tasks
        results |= {
            "push_s": round(push_s, 1),
            "push_tasks_per_s": round(args.tasks / push_s),
            "repush_noop_s": round(repush_s, 1),
            "rss_after_push_mib": round(_rss(proc.pid)),
        }

        # ---------------------------------------------------------------- push (one per request)
        if args.per_task_sample > 0:
            sample = _items(ws, args.per_task_sample, w, h, seed=2)
            ws.config["labelstudio"]["project_title"] = "bench-per-task"
            be1 = LabelStudioBackend(ws, **opts)
            pid1 = be1.ensure_project()
            payloads = [be1.task_payload(it, be1._local_url(it)) for it in sample]
            t = time.perf_counter()
            for p in payloads:
                be1.ls.projects.import_tasks(pid1, request=[p])
            per_task_s = (time.perf_counter() - t) / len(payloads)
            results |= {
                "per_task_request_s": round(per_task_s, 4),
                "per_task_extrapolated_s": round(per_task_s * args.tasks, 1),
                "bulk_speedup": round(per_task_s * args.tasks / push_s, 1),
            }

        # ---------------------------------------------------------------- pull
        ws.config["labelstudio"]["project_title"] = "bench-pull"
        bep = LabelStudioBackend(ws, **opts)
        pidp = bep.ensure_project()
        rng = np.random.default_rng(3)
        ys, xs = np.mgrid[0:h, 0:w]
        stroke = (xs - w * 0.3) ** 2 + (ys - h * 0.6) ** 2 < (0.06 * w) ** 2
        brush_rle = mask_to_brush_rle(stroke)
        annotated = _items(ws, args.tasks, w, h, seed=4)
        tasks = []
        for i, it in enumerate(annotated):
            task = bep.task_payload(it, bep._local_url(it))
            result = []
            for k in range(2):
                pts = px_to_pct(np.asarray(_polygon(rng, w, h)), w, h).tolist()
                result.append(
                    {
                        "id": f"a{k}",
                        "from_name": "lesion",
                        "to_name": "image",
                        "type": "polygonlabels",
                        "origin": "manual",
                        "original_width": w,
                        "original_height": h,
                        "image_rotation": 0,
                        "value": {"points": pts, "closed": True, "polygonlabels": ["Opacity"]},
                    }
                )
            if i % 10 == 0:
                result.append(
                    {
                        "id": "b",
                        "from_name": "lesion_brush",
                        "to_name": "image",
                        "type": "brushlabels",
                        "origin": "manual",
                        "original_width": w,
                        "original_height": h,
                        "image_rotation": 0,
                        "value": {"format": "rle", "rle": brush_rle, "brushlabels": ["Opacity"]},
                    }
                )
            task["annotations"] = [{"result": result, "lead_time": 12.0}]
            tasks.append((it, task))
        t = time.perf_counter()
        ids = {}
        for start in range(0, len(tasks), args.chunk_size):
            ids.update(bep._import_chunk(pidp, tasks[start : start + args.chunk_size]))
        results["annotated_import_s"] = round(time.perf_counter() - t, 1)
        jobs = {
            iid: JobRef(
                backend="labelstudio",
                project=str(pidp),
                task=str(tid),
                extra={"url": proc.url, "width": w, "height": h},
            )
            for iid, tid in ids.items()
        }
        raw_export_1, export_bytes = _raw_export(http, pidp)
        t = time.perf_counter()
        # cursor_margin_s=0 so that the incremental pull below shows the cost of reading
        # nothing new (the default margin re-reads tasks saved in the 30 s before a pull).
        with _profiled(args.profile, "pull"):
            pulled = LabelStudioBackend(ws, **opts, cursor_margin_s=0).pull(jobs, progress=False)
        pull_s = time.perf_counter() - t
        raw_export_2, _ = _raw_export(http, pidp)
        results |= {
            "raw_export_s": [round(raw_export_1, 1), round(raw_export_2, 1)],
            "export_mib": round(export_bytes / 2**20, 1),
            "pull_over_raw_export": round(pull_s / ((raw_export_1 + raw_export_2) / 2), 2),
        }
        n_ann = sum(len(o.annotations) for o in pulled.outcomes)
        assert n_ann == args.tasks and not pulled.failures, (n_ann, pulled.failures[:3])
        assert all(
            r.mask is not None and r.mask.shape == (h, w)
            for o in pulled.outcomes
            for r in o.annotations
        )
        t = time.perf_counter()
        inc = LabelStudioBackend(ws, **opts, cursor_margin_s=0).pull(
            jobs, cursor=pulled.cursor, progress=False
        )
        inc_s = time.perf_counter() - t
        results |= {
            "pull_s": round(pull_s, 1),
            "pull_annotations_per_s": round(n_ann / pull_s),
            "incremental_pull_nothing_new_s": round(inc_s, 1),
            "incremental_pull_tasks_read": sum(
                1 for o in inc.outcomes if o.status != "unannotated"
            ),
            "rss_after_pull_mib": round(_rss(proc.pid)),
        }
    finally:
        http.close()
        srv.kill_process(proc.pid, tmp / "data", grace=5)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print(json.dumps(results, indent=2))
    print()
    r = results
    print("| measure | result |")
    print("|---|---|")
    print(
        f"| push {r['tasks']:,} pre-annotated tasks (bulk, {r['chunk_size']}/request) | {r['push_s']} s ({r['push_tasks_per_s']} tasks/s) |"
    )
    print(f"| re-push, all present (idempotence listing only) | {r['repush_noop_s']} s |")
    print(
        f"| raw bulk import of the same payloads (before / after) | {r['raw_import_s'][0]} / "
        f"{r['raw_import_s'][1]} s; push / raw = **{r['push_over_raw_import']}x** |"
    )
    if "per_task_request_s" in r:
        print(
            f"| one task per request through the SDK | {r['per_task_request_s'] * 1000:.0f} ms/task, "
            f"measured on {args.per_task_sample} tasks; extrapolated to {r['tasks']:,}: {r['per_task_extrapolated_s']} s |"
        )
        print(f"| bulk speed-up | {r['bulk_speedup']}x |")
    print(
        f"| pull + rasterize {r['tasks']:,} annotations ({r['size_px']}x{r['size_px']} px, 10 % with a brush stroke) | {r['pull_s']} s ({r['pull_annotations_per_s']} annotations/s) |"
    )
    print(
        f"| raw JSON export of the same tasks (before / after, {r['export_mib']} MiB) | "
        f"{r['raw_export_s'][0]} / {r['raw_export_s'][1]} s; pull / raw = "
        f"**{r['pull_over_raw_export']}x** |"
    )
    print(f"| incremental pull, nothing new | {r['incremental_pull_nothing_new_s']} s |")
    print(
        f"| server RSS: idle / after push / after pull | {r['rss_idle_mib']} / {r['rss_after_push_mib']} / {r['rss_after_pull_mib']} MiB |"
    )


if __name__ == "__main__":
    main()
