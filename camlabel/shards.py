"""Grad-CAM in shards: N machines each pre-annotate a deterministic 1/N of the images.

``camlabel gradcam MODEL IMAGES -w WS --shard K/N`` keeps the images whose file content hash
(SHA-256 of the file's bytes) is ``K-1`` modulo ``N`` and runs the ordinary Grad-CAM step
into a shard folder, ``WS/shards/K-of-N/``: a small workspace of its own (the same
``camlabel.json``; display PNGs, heatmaps, a ledger) plus ``results.jsonl``, its records in
the ledger's interchange format. Nothing in ``WS`` itself is written, so the N runs can go
on separate machines under any scheduler (a Slurm array, SageMaker Processing, Kubernetes
jobs) and a shard re-run resumes where it stopped.

``camlabel merge-shards -w WS DIR...`` copies each shard's files into ``WS`` (only those
missing or different) and merges its records into the ledger with ``gradcam``'s own rule
(prediction and heatmap are replaced; the pre-annotation only while the image is not yet
pushed or annotated and its pre-annotation came from a CAM method). A record that would not
change is not written, so merging a shard twice, or a re-run shard, changes nothing.
"""

from __future__ import annotations

import dataclasses
import filecmp
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camlabel.errors import UsageError, WorkspaceError
from camlabel.fileio import atomic_copy, atomic_write_text
from camlabel.ledger import read_jsonl
from camlabel.records import ImageRecord

if TYPE_CHECKING:
    from camlabel.preannotate import GradcamSummary
    from camlabel.workspace import Workspace

RESULTS = "results.jsonl"
SHARD_INFO = "shard.json"


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 1 <= K <= N."""
    try:
        k_s, n_s = text.split("/")
        k, n = int(k_s), int(n_s)
    except ValueError:
        raise UsageError(
            f"--shard must be K/N, e.g. 2/8 (shard 2 of 8). Received: {text!r}"
        ) from None
    if not 1 <= k <= n:
        raise UsageError(f"--shard K/N needs 1 <= K <= N. Received: K={k}, N={n}")
    return k, n


def shard_of(path: Path, n: int) -> int:
    """The 0-based shard of a file: SHA-256 of its bytes modulo ``n`` (stable everywhere)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return int(h.hexdigest(), 16) % n


def shard_dir(ws: Workspace, k: int, n: int) -> Path:
    return ws.root / "shards" / f"{k}-of-{n}"


def run_gradcam_shard(
    ws: Workspace,
    model_path: Path,
    inputs: Sequence[str | Path],
    shard: tuple[int, int],
    **gradcam_kw: Any,
) -> tuple[GradcamSummary, Path]:
    """Grad-CAM on shard K of N of ``inputs`` into ``WS/shards/K-of-N/``; returns (summary, dir)."""
    from camlabel.config import CONFIG_NAME
    from camlabel.preannotate import run_gradcam
    from camlabel.workspace import Workspace

    k, n = shard
    out = shard_dir(ws, k, n)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_NAME, json.dumps(ws.config, indent=2) + "\n")
    sub = Workspace.init(out)

    def mine(p: Path) -> bool:
        return shard_of(p, n) == k - 1

    summary = run_gradcam(sub, model_path, inputs, select=mine, **gradcam_kw)
    count = sub.ledger.export_jsonl(out / RESULTS)
    atomic_write_text(
        out / SHARD_INFO,
        json.dumps(
            {"shard": k, "of": n, "model_version": summary.model_version, "records": count},
            indent=2,
            sort_keys=True,
        )
        + "\n",
    )
    return summary, out


@dataclass
class MergeSummary:
    """What :func:`merge_shards` did."""

    shards: int = 0
    records: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    files_copied: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _copy_if_different(src: Path, dst: Path) -> bool:
    if dst.exists() and filecmp.cmp(src, dst, shallow=False):
        return False
    atomic_copy(src, dst)
    return True


def _merged(old: ImageRecord, new: ImageRecord) -> ImageRecord:
    """``old`` with a shard's Grad-CAM results, by the rule run_gradcam applies."""
    from camlabel.cam import CAM_METHODS
    from camlabel.preannotate import PREANNOTATION_REPLACEABLE_STATES

    changes: dict[str, Any] = {"prediction": new.prediction, "heatmap": new.heatmap}
    if old.label is None and new.label is not None:
        changes["label"] = new.label
    if old.patient_id is None and new.patient_id is not None:
        changes["patient_id"] = new.patient_id
    if old.state in PREANNOTATION_REPLACEABLE_STATES and (
        old.preannotation is None or old.preannotation.source in CAM_METHODS
    ):
        changes["preannotation"] = new.preannotation
    return dataclasses.replace(old, **changes)


def merge_shards(ws: Workspace, dirs: Sequence[Path]) -> MergeSummary:
    """Merge shard folders into the workspace; idempotent (see the module docstring)."""
    summary = MergeSummary()
    for d in dirs:
        d = Path(d)
        results = d / RESULTS
        if not results.is_file():
            raise WorkspaceError(
                f"{d} is not a finished Grad-CAM shard (no {RESULTS})",
                hint="run camlabel gradcam ... --shard K/N to completion first; it writes "
                f"{RESULTS} at the end",
            )
        read = read_jsonl(results)
        summary.warnings.extend(read.warnings)
        # Files first: the ledger never points to a file that is not there yet.
        for rec in read.records.values():
            rels = [rec.display_path]
            if rec.heatmap is not None:
                rels += [rec.heatmap.path, rec.heatmap.overlay_path]
            for rel in rels:
                src = d / rel
                if not src.is_file():
                    raise WorkspaceError(
                        f"{src}: missing, but {results} refers to it",
                        hint="copy the whole shard folder (images/, heatmaps/, results.jsonl)",
                    )
                summary.files_copied += _copy_if_different(src, ws.abs(rel))
        with ws.ledger.transaction() as txn:
            existing = txn.get_many(read.records)
            for iid, rec in read.records.items():
                summary.records += 1
                old = existing.get(iid)
                if old is None:
                    txn.put(rec)
                    summary.added += 1
                    continue
                cand = _merged(old, rec)
                if cand == old:
                    summary.unchanged += 1
                else:
                    txn.put(cand.evolve())
                    summary.updated += 1
        summary.shards += 1
    ws.record_run(
        "merge-shards",
        {"shards": [str(Path(d).resolve()) for d in dirs]},
        result={k: v for k, v in summary.to_json().items() if k != "warnings"},
    )
    return summary
