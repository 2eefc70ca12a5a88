"""Registering images: content-hash keys, no duplicates, failures listed, no tags leaked;
the config checked once when a workspace is opened."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from camlabel.cli.main import cli
from camlabel.errors import ConfigError
from camlabel.workspace import Workspace


def _png(path: Path, value: int, shape=(20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full(shape, value, np.uint8)
    img[2:5, 3:9] = 255 - value
    cv2.imwrite(str(path), img)
    return path


def test_register_is_idempotent_and_keyed_by_pixels(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    a = _png(tmp_path / "in" / "a.png", 10)
    a_copy = tmp_path / "in" / "copy-of-a.png"
    a_copy.write_bytes(a.read_bytes())
    b = _png(tmp_path / "in" / "b.png", 50)
    bad = tmp_path / "in" / "notes.png"
    bad.write_text("not an image")
    recs, failures = ws.register_images([a, b, a_copy, bad], labels={str(a): "covid"})
    assert [f[0] for f in failures] == [str(bad)]
    assert len({r.image_id for r in recs}) == 2  # a and its copy share a key
    assert len(ws.ledger.all()) == 2
    _recs2, _ = ws.register_images([a, b])
    assert len(ws.ledger.all()) == 2  # a re-run adds nothing
    ra = ws.ledger.get(recs[0].image_id)
    assert ra is not None and ra.label == "covid" and (ra.width, ra.height) == (30, 20)
    png = ws.abs(ra.display_path)
    assert png.name == f"{ra.image_id}.png"
    assert np.array_equal(
        cv2.imread(str(png), cv2.IMREAD_UNCHANGED), cv2.imread(str(a), cv2.IMREAD_UNCHANGED)
    )


def test_phantoms_and_status_cli(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    r = CliRunner().invoke(
        cli, ["phantoms", str(out), "--count", "6", "--seed", "3", "--size", "96"]
    )
    assert r.exit_code == 0, r.output
    assert "wrote 6 phantoms" in r.output
    assert len(list((out / "images").rglob("*.png"))) == 6
    ws = Workspace.init(tmp_path / "ws")
    recs, failures = ws.register_images(sorted((out / "images").rglob("*.png")))
    assert not failures and len(recs) == 6
    r = CliRunner().invoke(cli, ["status", "-w", str(ws.root)])
    assert r.exit_code == 0
    assert "6 image(s)" in r.output and "registered: 6" in r.output


@pytest.mark.parametrize(
    ("content", "key", "received"),
    [
        ("[1, 2]", "one JSON object", "list"),
        ('{"cam": 5}', "'cam' must be an object", "cam=5"),
        ('{"seed": "abc"}', "seed must be an integer", "seed='abc'"),
        (
            '{"consensus": {"min_annotations": "two"}}',
            "consensus.min_annotations must be an integer",
            "consensus.min_annotations='two'",
        ),
        (
            '{"labelstudio": {"port": "eighty"}}',
            "labelstudio.port must be an integer",
            "labelstudio.port='eighty'",
        ),
    ],
)
def test_open_validates_the_whole_config(
    tmp_path: Path, content: str, key: str, received: str
) -> None:
    ws = Workspace.init(tmp_path / "ws")
    (ws.root / "camlabel.json").write_text(content)
    with pytest.raises(ConfigError) as exc:
        Workspace.open(ws.root)
    msg = exc.value.message
    assert "camlabel.json" in msg and key in msg and received in msg, msg


def test_unknown_keys_in_the_config_are_kept(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    (ws.root / "camlabel.json").write_text('{"my_note": 1, "cam": {"colour": "red"}}')
    again = Workspace.open(ws.root)
    assert again.config["my_note"] == 1 and again.config["cam"]["colour"] == "red"
    assert again.settings.cam.threshold == 0.5


def test_a_backend_section_must_be_an_object(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    (ws.root / "camlabel.json").write_text('{"groundtruth": "my-bucket"}')
    with pytest.raises(ConfigError, match="'groundtruth' must be an object"):
        Workspace.open(ws.root)
