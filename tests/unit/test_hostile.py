"""Hostile input without a server: annotations that cannot be read as drawn, workspaces and
files that used to end in a traceback, and the CLI's single failure path.

Every case asserts the exit code or the exception type, the message (what failed and the
fix), and that nothing earlier was lost. The Label Studio server cases are in
tests/integration/test_hostile_ls.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from camlabel.backends.labelstudio.convert import convert_annotation, mask_to_brush_rle
from camlabel.cli.main import cli
from camlabel.errors import AnnotationError, CamlabelError, WorkspaceError
from camlabel.locks import exclusive

W, H = 50, 40
CLASSES = ("covid", "normal")


def _poly(points_pct: Any, **over: Any) -> dict[str, Any]:
    r = {
        "from_name": "lesion",
        "to_name": "image",
        "type": "polygonlabels",
        "original_width": W,
        "original_height": H,
        "value": {"points": points_pct, "polygonlabels": ["Opacity"]},
    }
    r.update(over)
    return r


def _convert(*regions: Any, result: Any = None) -> Any:
    ann = {"id": 7, "completed_by": 1, "result": list(regions) if result is None else result}
    return convert_annotation(ann, "12", W, H, lesion_label="Opacity", classes=CLASSES)


SQUARE = [[10, 10], [40, 10], [40, 50], [10, 50]]


def test_a_readable_annotation_still_converts() -> None:
    res = _convert(
        _poly(SQUARE),
        {"from_name": "image_class", "type": "choices", "value": {"choices": ["covid"]}},
    )
    assert res.mask is not None and res.mask.sum() == 15 * 16
    assert res.annotation.class_choice == "covid"


def test_an_empty_result_is_an_explicit_no_lesion() -> None:
    res = _convert(result=[])
    assert res.mask is not None and not res.mask.any() and res.annotation.status == "submitted"


BRUSH_EMPTY = {"format": "rle", "rle": mask_to_brush_rle(np.zeros((H, W), bool))}

REFUSED = {
    "2-point polygon": ([_poly([[10, 10], [40, 40]])], "at least 3 points"),
    "polygon wholly outside": ([_poly([[110, 110], [150, 110], [150, 150]])], "polygon"),
    "rectanglelabels": (
        [
            {
                "from_name": "lesion",
                "type": "rectanglelabels",
                "value": {
                    "x": 1,
                    "y": 1,
                    "width": 50,
                    "height": 50,
                    "rectanglelabels": ["Opacity"],
                },
            }
        ],
        "'rectanglelabels' region",
    ),
    "label Banana": (
        [_poly(SQUARE, value={"points": SQUARE, "polygonlabels": ["Banana"]})],
        "label 'Banana' is not the lesion label 'Opacity'",
    ),
    "unknown from_name": ([_poly(SQUARE, from_name="nonsense")], "unknown control 'nonsense'"),
    "unknown class": (
        [{"from_name": "image_class", "type": "choices", "value": {"choices": ["martian"]}}],
        "unknown image class 'martian'",
    ),
    "original_width abc": ([_poly(SQUARE, original_width="abc")], "original_width"),
    "points not a list": ([_poly("abc")], "at least 3 points"),
    "NaN vertex": ([_poly([[1, 1], [float("nan"), 2], [3, 30]])], "not finite"),
    "brush without rle": (
        [{"from_name": "lesion_brush", "type": "brushlabels", "value": {"format": "rle"}}],
        "non-empty 'rle' list",
    ),
    "brush rle a huge int": (
        [
            {
                "from_name": "lesion_brush",
                "type": "brushlabels",
                "value": {"format": "rle", "rle": 10**12},
            }
        ],
        "non-empty 'rle' list",
    ),
    "brush covering nothing": (
        [{"from_name": "lesion_brush", "type": "brushlabels", "value": BRUSH_EMPTY}],
        "covers no pixel",
    ),
    "region not an object": (["abc"], "not a JSON object"),
    "value not an object": ([_poly(SQUARE, value="abc")], "'value' must be a JSON object"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_an_unreadable_annotation_is_refused_with_a_named_reason(case: str) -> None:
    regions, reason = REFUSED[case]
    with pytest.raises(AnnotationError) as err:
        _convert(_poly(SQUARE), *regions)  # a good region beside it changes nothing
    assert reason in err.value.message
    assert err.value.message.startswith("task 12, annotation 7")


def test_result_that_is_not_a_list_is_refused() -> None:
    with pytest.raises(AnnotationError, match="'result' must be a list"):
        _convert(result={"points": SQUARE})


# ------------------------------------------------------------------------- fuzz
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
POINT = st.lists(
    st.one_of(st.floats(-50, 150), st.integers(-50, 150), JSON), min_size=0, max_size=3
)
POINTS = st.one_of(JSON, st.lists(st.one_of(POINT, JSON), max_size=6))
RLE = st.one_of(
    JSON,
    st.lists(st.integers(0, 255), max_size=64),
    st.just(mask_to_brush_rle(np.eye(H, W, dtype=bool))),
)
TYPES = st.sampled_from(
    ["polygonlabels", "polygon", "brushlabels", "rectanglelabels", "choices", "textarea", "x"]
)
FROM = st.sampled_from(["lesion", "lesion_brush", "image_class", "nonsense", None])
LABELS = st.one_of(JSON, st.lists(st.sampled_from(["Opacity", "Banana", ""]), max_size=2))
SIZE = st.one_of(st.just(W), st.just(H), JSON)


@st.composite
def regions(draw: st.DrawFn) -> Any:
    kind = draw(TYPES)
    value = draw(
        st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "points": POINTS,
                    "rle": RLE,
                    "format": st.sampled_from(["rle", "png"]),
                    "polygonlabels": LABELS,
                    "brushlabels": LABELS,
                    "choices": st.one_of(JSON, st.lists(st.sampled_from(["covid", "x"]))),
                },
            ),
            JSON,
        )
    )
    region = draw(
        st.fixed_dictionaries(
            {"type": st.just(kind), "from_name": FROM, "value": st.just(value)},
            optional={
                "original_width": SIZE,
                "original_height": SIZE,
                "to_name": st.sampled_from(["image", "other"]),
            },
        )
    )
    return draw(st.one_of(st.just(region), JSON)) if draw(st.booleans()) else region


DRAWING = {"polygonlabels": "lesion", "polygon": "lesion", "brushlabels": "lesion_brush"}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    result=st.one_of(JSON, st.lists(regions(), max_size=4)),
    cancelled=st.sampled_from([None, False, True]),
    ann_id=JSON,
    lead=JSON,
    when=JSON,
)
def test_fuzz_annotation_to_mask(
    result: Any, cancelled: Any, ann_id: Any, lead: Any, when: Any
) -> None:
    """Arbitrary JSON never raises anything but a CamlabelError and never yields a mask that
    silently dropped a drawing: every region left in an accepted answer is one the converter
    reads, and a drawing region always contributes pixels."""
    ann = {
        "id": ann_id,
        "result": result,
        "was_cancelled": cancelled,
        "lead_time": lead,
        "created_at": when,
        "updated_at": when,
    }
    try:
        res = convert_annotation(ann, "1", W, H, lesion_label="Opacity", classes=CLASSES)
    except CamlabelError as exc:
        assert isinstance(exc, AnnotationError) and exc.message.startswith("task 1, annotation")
        return
    if cancelled:
        assert res.mask is None and res.annotation.status == "skipped"
        return
    assert res.mask is not None and res.mask.shape == (H, W) and res.mask.dtype == bool
    assert isinstance(result, list) or result is None
    drawn = [r for r in result or [] if r.get("type") in DRAWING]
    for r in result or []:
        assert isinstance(r, dict)
        kind = r["type"]
        assert kind in (*DRAWING, "choices", "textarea")
        if kind == "textarea":
            continue  # carries no drawing and no class: ignored whatever it holds
        assert isinstance(r.get("value"), dict)
        if kind in DRAWING:
            assert r["from_name"] == DRAWING[kind]
            labels = r["value"].get(kind)
            assert labels is None or set(labels) <= {"Opacity"}
    if drawn:
        assert res.mask.any()
    choice = res.annotation.class_choice
    assert choice is None or choice in CLASSES


# ------------------------------------------------------------------------- lock
def test_the_push_lock_waits_then_fails_naming_the_holder(tmp_path: Path) -> None:
    messages: list[str] = []
    with (
        exclusive(tmp_path, "push-x", what="push-jobs --backend x"),
        pytest.raises(WorkspaceError) as err,
        exclusive(
            tmp_path, "push-x", what="push-jobs --backend x", wait_s=0.5, on_wait=messages.append
        ),
    ):
        pass  # pragma: no cover - never reached
    assert f"pid {os.getpid()}" in err.value.message
    assert "gave up after waiting 0.5 s" in err.value.message
    assert len(messages) == 1 and "waiting for another push-jobs --backend x" in messages[0]
    with exclusive(tmp_path, "push-x", what="push-jobs", wait_s=0):
        pass  # released: taken at once


# ------------------------------------------------------------------------- CLI
def _run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_v_status_on_a_missing_workspace_prints_no_traceback(tmp_path: Path) -> None:
    res = _run("-v", "status", "-w", str(tmp_path / "nope"))
    assert res.exit_code == 1
    assert "Traceback" not in res.output and "error:" in res.output


def test_corrupt_pull_cursor_is_a_clear_error(tmp_path: Path) -> None:
    from camlabel.records import JobRef

    ws = _ws_with_one_pushed_image(tmp_path, JobRef(backend="labelstudio", project="1", task="1"))
    cursor = ws.root / "exports" / "labelstudio-cursor.json"
    cursor.write_text("{not json")
    res = _run("pull-masks", "-w", str(ws.root), "--url", "http://127.0.0.1:9", "--token", "t" * 20)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert str(cursor) in res.output and "--full" in res.output


def _ws_with_one_pushed_image(tmp_path: Path, job: Any) -> Any:
    import cv2

    from camlabel.workspace import Workspace

    ws = Workspace.init(tmp_path / "ws")
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.full((8, 8), 9, np.uint8))
    (rec,), _ = ws.register_images([img])
    with ws.ledger.transaction() as txn:
        txn.put(rec.with_job(job))
    return ws


def test_push_failures_exit_1_through_a_typed_error(tmp_path: Path) -> None:
    """push-jobs/pull-masks no longer end with SystemExit(1): main.py formats a BatchError."""
    src = Path(__file__).resolve().parents[2] / "camlabel" / "cli" / "labeling.py"
    assert "SystemExit" not in src.read_text()


def test_read_only_workspace_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = _run("init", str(ro / "ws"))
    finally:
        ro.chmod(0o755)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert str(ro / "ws") in res.output and "hint:" in res.output


def test_cursor_file_is_left_untouched_by_a_failed_pull(tmp_path: Path) -> None:
    from camlabel.records import JobRef

    ws = _ws_with_one_pushed_image(tmp_path, JobRef(backend="labelstudio", project="1", task="1"))
    cursor = ws.root / "exports" / "labelstudio-cursor.json"
    cursor.write_text(json.dumps(["a list, not a cursor"]))
    res = _run("pull-masks", "-w", str(ws.root), "--url", "http://127.0.0.1:9", "--token", "t" * 20)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert json.loads(cursor.read_text()) == ["a list, not a cursor"]


# ------------------------------------------------------------------------- gradcam
@pytest.fixture(scope="module")
def odd_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose classes are not the workspace's (covid, normal, pneumonia)."""
    keras = pytest.importorskip("keras")
    from camlabel.models.ensemble import build_ensemble

    keras.utils.set_random_seed(5)
    path = tmp_path_factory.mktemp("odd") / "odd.keras"
    build_ensemble(("cat", "dog"), image_size=32, backbones=("efficientnetb0",)).save(path)
    return path


def _ws_and_images(tmp_path: Path, n: int) -> tuple[Any, Path]:
    import cv2

    from camlabel.workspace import Workspace

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(n):
        img = np.full((40, 40), 30 * i, np.uint8)
        img[10:20, 10 + i : 25] = 240
        cv2.imwrite(str(folder / f"{i}.png"), img)
    return Workspace.init(tmp_path / "ws"), folder


def test_gradcam_on_a_folder_without_images_fails(tmp_path: Path, odd_model: Path) -> None:
    from camlabel.workspace import Workspace

    ws = Workspace.init(tmp_path / "ws")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no image here")
    res = _run("gradcam", str(odd_model), str(empty), "-w", str(ws.root))
    assert res.exit_code == 1
    assert f"no image found in {empty}" in res.output and "hint:" in res.output
    assert ws.ledger.all() == []


def test_gradcam_warns_about_other_classes_and_all_completes_a_plain_run(
    tmp_path: Path, odd_model: Path
) -> None:
    ws, folder = _ws_and_images(tmp_path, 3)
    plain = _run("gradcam", str(odd_model), str(folder), "-w", str(ws.root), "--json")
    assert plain.exit_code == 0, plain.output
    s = json.loads(plain.stdout)
    assert "differ from the workspace's" in s["warnings"][0] and "--all" in s["warnings"][0]
    assert "warning: the model's classes ['cat', 'dog']" in plain.stderr
    # neither cat nor dog is a lesion class: no pre-annotation yet
    assert s["processed"] == 3 and s["preannotated"] == 0
    assert all(r.preannotation is None for r in ws.ledger.all())
    everything = _run("gradcam", str(odd_model), str(folder), "-w", str(ws.root), "--all", "--json")
    assert everything.exit_code == 0, everything.output
    s = json.loads(everything.stdout)
    assert (s["processed"], s["skipped"], s["preannotated"]) == (3, 0, 3)
    assert all(r.preannotation is not None for r in ws.ledger.all())
    again = _run("gradcam", str(odd_model), str(folder), "-w", str(ws.root), "--all", "--json")
    assert (json.loads(again.stdout)["processed"], json.loads(again.stdout)["skipped"]) == (0, 3)


def test_a_symlink_loop_in_an_image_folder_fails_for_that_file_alone(
    tmp_path: Path, odd_model: Path
) -> None:
    ws, folder = _ws_and_images(tmp_path, 1)
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to("..")
    res = _run("gradcam", str(odd_model), str(folder), "-w", str(ws.root))
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "loop.png" in res.output and "symbolic link that loops" in res.output
    assert len(ws.ledger.all()) == 1


# ------------------------------------------------------------------------- train-cls
@pytest.fixture
def small_set(tmp_path: Path) -> Path:
    import cv2

    root = tmp_path / "data"
    for cls in ("covid", "normal"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(root / cls / f"{i}.png"), np.full((16, 16), 40 * i, np.uint8))
    return root


def _train(data: Path, out: Path, *extra: str) -> Any:
    return _run(
        "train-cls", str(data), "--out", str(out), "--epochs", "1", "--image-size", "32", *extra
    )


def test_train_cls_names_missing_files_and_refuses_unknown_labels(
    small_set: Path, tmp_path: Path
) -> None:
    csv = tmp_path / "meta.csv"
    csv.write_text(
        "file,label\n"
        f"{small_set}/covid/0.png,covid\n{small_set}/normal/0.png,normal\n"
        f"{small_set}/normal/missing.png,normal\n"
    )
    out = tmp_path / "m.keras"
    res = _train(csv, out)
    assert res.exit_code == 2 and "missing.png" in res.output and "do not exist" in res.output
    csv.write_text(
        "file,label\n"
        f"{small_set}/covid/0.png,covid\n{small_set}/normal/0.png,normal\n"
        f"{small_set}/normal/1.png,martian\n"
    )
    res = _train(csv, out)
    assert res.exit_code == 2 and "labels ['martian'] are not among" in res.output
    assert "--classes" in res.output and not out.exists()


def test_train_cls_refuses_a_single_class(small_set: Path, tmp_path: Path) -> None:
    import shutil

    shutil.rmtree(small_set / "normal")
    res = _train(small_set, tmp_path / "m.keras")
    assert res.exit_code == 2 and "a classifier needs images of at least 2 classes" in res.output


def test_train_cls_checks_out_before_training(small_set: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where --out wants a folder")
    res = _train(small_set, blocker / "m.keras")
    assert res.exit_code == 2 and "cannot be written" in res.output
    assert "checked before training" in res.output and "Traceback" not in res.output


# ------------------------------------------------------------------------- Ground Truth
def _preannotated_ws(tmp_path: Path) -> Any:
    import cv2

    from camlabel.records import Preannotation
    from camlabel.workspace import Workspace

    ws = Workspace.init(tmp_path / "ws")
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.full((16, 16), 9, np.uint8))
    (rec,), _ = ws.register_images([img])
    pre = Preannotation(
        polygons=({"exterior": [[1, 1], [9, 1], [9, 9]], "holes": []},),
        source="gradcam",
        model_version="m",
        score=0.5,
    )
    with ws.ledger.transaction() as txn:
        txn.put(rec.evolve(preannotation=pre))
    return ws


GT = ["--backend", "groundtruth", "--dry-run", "--role-arn", "arn:aws:iam::123456789012:role/gt"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--bucket", "Bad_Bucket!!"], "invalid S3 bucket name. Received: bucket='Bad_Bucket!!'"),
        (
            [
                "--bucket",
                "good-bucket",
                "--region",
                "us-east-1",
                "--workteam-arn",
                "arn:aws:sagemaker:eu-west-1:123456789012:workteam/private-crowd/team",
            ],
            "--workteam-arn is in region eu-west-1 but the job runs in --region us-east-1",
        ),
    ],
)
def test_groundtruth_dry_run_refuses_what_aws_would(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    ws = _preannotated_ws(tmp_path)
    res = _run("push-jobs", "-w", str(ws.root), *GT, *flags)
    assert res.exit_code == 1, res.output
    assert message in res.output and "hint:" in res.output
    assert not (ws.root / "exports").exists() or not any((ws.root / "exports").iterdir())


# ------------------------------------------------------------------------- mask files
def test_deleted_or_empty_mask_files_are_named_and_rewritten_by_a_full_pull(
    tmp_path: Path,
) -> None:
    import cv2

    from camlabel import loop
    from camlabel.backends.fake import FakeServer
    from camlabel.errors import BatchError
    from camlabel.imaging import read_mask_png
    from camlabel.train.segmenter import check_mask_files
    from camlabel.workspace import Workspace

    ws = Workspace.init(tmp_path / "ws")
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        cv2.imwrite(str(p), np.full((12, 16), 20 * i, np.uint8))
        paths.append(p)
    recs, _ = ws.register_images(paths)
    server = FakeServer()
    opts = {"server": server}
    loop.push_jobs(ws, "fake", options=opts, include_all=True, progress=False)
    want = {}
    for k, rec in enumerate(recs):
        m = np.zeros((12, 16), bool)
        m[2 : 5 + k, 3:9] = True
        server.annotate(rec.image_id, m)
        want[rec.image_id] = m
    loop.pull_masks(ws, "fake", options=opts, progress=False)
    masks = {r.image_id: ws.abs(r.mask.path) for r in ws.ledger.all() if r.mask}
    gone, empty, kept = (masks[r.image_id] for r in recs)
    gone.unlink()
    empty.write_bytes(b"")

    res = _run("status", "-w", str(ws.root), "--json")
    assert json.loads(res.stdout)["masks"]["missing_files"] == 2
    with pytest.raises(BatchError) as err:
        check_mask_files(ws)
    assert {item for item, _ in err.value.failures} == {str(gone), str(empty)}
    assert "pull-masks --full" in (err.value.hint or "")

    loop.pull_masks(ws, "fake", options=opts, full=True, progress=False)
    check_mask_files(ws)  # nothing missing any more
    for rec in recs:
        assert np.array_equal(read_mask_png(masks[rec.image_id]), want[rec.image_id])
    assert kept.is_file()


def test_a_corrupt_model_file_is_not_called_missing(tmp_path: Path) -> None:
    from camlabel.classify import load_classifier
    from camlabel.errors import ModelError

    bad = tmp_path / "cls.keras"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(ModelError) as err:
        load_classifier(bad)
    assert "not a .keras archive" in err.value.message and "File not found" not in str(err.value)


def test_os_errors_become_clear_messages_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read-only or full disks and odd paths: the CLI names the file and the fix (exit 1)."""
    import errno

    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = _run("init", str(blocker / "ws"))
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"Not a directory: {blocker / 'ws'}" in res.output

    from camlabel import loop
    from camlabel.workspace import Workspace

    ws = Workspace.init(tmp_path / "ws")
    for code, hint in ((errno.EROFS, "read-only"), (errno.ENOSPC, "disk is full")):

        def fail(_ws: Any, code: int = code, **_kw: Any) -> Any:
            raise OSError(code, os.strerror(code), str(ws.root / "ledger.db"))

        monkeypatch.setattr(loop, "workspace_status", fail)
        res = _run("status", "-w", str(ws.root))
        assert res.exit_code == 1 and "Traceback" not in res.output
        assert str(ws.root / "ledger.db") in res.output and hint in res.output
    with pytest.raises(OSError):  # -vv: the full traceback
        _run("-vv", "status", "-w", str(ws.root))
