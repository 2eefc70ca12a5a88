"""gradcam --shard K/N and merge-shards: a deterministic partition, merged idempotently,
equal to one unsharded run (a 64 px one-backbone model on a few phantoms, through the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from camlabel.errors import UsageError
from camlabel.records import JobRef
from camlabel.shards import parse_shard, shard_of
from camlabel.workspace import Workspace

pytest.importorskip("keras")

from camlabel.cli.main import cli
from tests.unit.test_classify_cli import model_path, phantoms  # noqa: F401  (fixtures)


def test_parse_shard() -> None:
    assert parse_shard("2/8") == (2, 8)
    for bad in ("0/2", "3/2", "x", "1/2/3", "a/b"):
        with pytest.raises(UsageError, match="--shard"):
            parse_shard(bad)


def test_shards_partition_the_files_by_content(tmp_path: Path) -> None:
    files = []
    for i in range(40):
        p = tmp_path / f"{i}.bin"
        p.write_bytes(f"image {i}".encode())
        files.append(p)
    for n in (1, 3, 7):
        groups = [[p for p in files if shard_of(p, n) == k] for k in range(n)]
        assert sorted(p for g in groups for p in g) == sorted(files)  # each in exactly one shard
        assert [[shard_of(p, n) for p in g] for g in groups] == [
            [k] * len(g) for k, g in enumerate(groups)
        ]
    # by content, not by name: a renamed copy lands in the same shard
    (tmp_path / "copy.bin").write_bytes(files[5].read_bytes())
    assert shard_of(tmp_path / "copy.bin", 7) == shard_of(files[5], 7)
    assert {shard_of(p, 3) for p in files} == {0, 1, 2}


def _merge(ws: Workspace, *dirs: Path) -> dict:  # type: ignore[type-arg]
    r = CliRunner().invoke(cli, ["merge-shards", *map(str, dirs), "-w", str(ws.root), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _export(ws: Path, out: Path) -> bytes:
    r = CliRunner().invoke(cli, ["ledger", "export", "-w", str(ws), "--jsonl", str(out)])
    assert r.exit_code == 0, r.output
    return out.read_bytes()


@pytest.mark.slow
def test_two_shards_merge_idempotently_and_equal_one_run(
    tmp_path: Path,
    phantoms: Path,  # noqa: F811  (the imported fixture)
    model_path: Path,  # noqa: F811
) -> None:
    images = str(phantoms / "images")
    single = Workspace.init(tmp_path / "single")
    r = CliRunner().invoke(
        cli, ["gradcam", str(model_path), images, "-w", str(single.root), "--all"]
    )
    assert r.exit_code == 0, r.output

    ws = Workspace.init(tmp_path / "ws")
    dirs = []

    def shard_run(k: int) -> dict:  # type: ignore[type-arg]
        args = ["gradcam", str(model_path), images, "-w", str(ws.root), "--all", "--json"]
        r = CliRunner().invoke(cli, [*args, "--shard", f"{k}/2"])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    for k in (1, 2):
        assert shard_run(k)["processed"] > 0
        d = ws.root / "shards" / f"{k}-of-2"
        assert (d / "results.jsonl").is_file() and json.loads((d / "shard.json").read_text())[
            "of"
        ] == 2
        dirs.append(d)
    assert len(ws.ledger) == 0  # a shard run never writes the workspace's own ledger
    shard_ids = [
        {json.loads(x)["image_id"] for x in (d / "results.jsonl").read_text().splitlines()}
        for d in dirs
    ]
    assert shard_ids[0] and shard_ids[1] and not shard_ids[0] & shard_ids[1]

    first = _merge(ws, *dirs)
    assert first["added"] == 9 and first["unchanged"] == 0 and first["files_copied"] == 27
    once = _export(ws.root, tmp_path / "once.jsonl")

    # merged again, and after a shard re-run (everything skipped): nothing changes
    again = _merge(ws, *dirs)
    assert (again["unchanged"], again["added"], again["updated"], again["files_copied"]) == (
        9,
        0,
        0,
        0,
    )
    assert shard_run(1)["processed"] == 0
    assert _merge(ws, dirs[0])["unchanged"] == len(shard_ids[0])
    assert _export(ws.root, tmp_path / "twice.jsonl") == once

    # the union is the unsharded run: same images, same predictions, same heatmaps
    merged = {r.image_id: r for r in ws.ledger.all()}
    alone = {r.image_id: r for r in single.ledger.all()}
    assert set(merged) == set(alone) == shard_ids[0] | shard_ids[1]
    for iid, rec in merged.items():
        assert rec.prediction is not None and alone[iid].prediction is not None
        assert rec.prediction.predicted_class == alone[iid].prediction.predicted_class
        assert rec.heatmap is not None and alone[iid].heatmap is not None
        np.testing.assert_allclose(
            np.load(ws.abs(rec.heatmap.path)).astype(np.float32),
            np.load(single.abs(alone[iid].heatmap.path)).astype(np.float32),
            atol=2e-3,
        )
        assert ws.abs(rec.display_path).is_file() and ws.abs(rec.heatmap.overlay_path).is_file()

    # an image pushed meanwhile keeps its pre-annotation; merging still changes nothing else
    iid = sorted(merged)[0]
    ws.ledger.update(
        iid, lambda r: r.evolve(preannotation=None).with_job(JobRef("labelstudio", "1", "7"))
    )
    assert _merge(ws, *dirs)["unchanged"] == 9
    assert ws.ledger.get(iid).preannotation is None

    r = CliRunner().invoke(cli, ["merge-shards", str(tmp_path), "-w", str(ws.root)])
    assert r.exit_code == 1 and "not a finished Grad-CAM shard" in r.output
