"""The Ground Truth worker templates render offline (python-liquid, strict undefined) and the
crowd element's attributes hold well-formed JSON with the right content."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
from liquid import Environment, StrictUndefined

from camlabel.backends.groundtruth.convert import color_map_for
from camlabel.resources import template_path

# A label with both quote characters and markup: any quoting mistake shows up as bad JSON.
HOSTILE_LABEL = 'Op\'acity "GGO" <b>&'


def signed(uri: str) -> str:
    return f"https://bucket.s3.amazonaws.com/{uri[5:]}?X-Amz-Signature=ab'c&X-Amz-Date=1"


def environment() -> Environment:
    env = Environment(undefined=StrictUndefined)
    env.filters["grant_read_access"] = signed
    env.filters["to_json"] = lambda v: json.dumps(v)
    return env


class CrowdElements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: dict[str, dict[str, str | None]] = {}
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag.startswith("crowd-") and tag != "crowd-form":
            self.elements[tag] = dict(attrs)


def render(name: str, task_input: dict) -> CrowdElements:
    text = template_path("groundtruth", name).read_text(encoding="utf-8")
    html = environment().from_string(text).render(task={"input": task_input})
    parser = CrowdElements()
    parser.feed(html)
    parser.close()
    return parser


@pytest.mark.parametrize("label", ["Opacity", HOSTILE_LABEL])
def test_adjustment_template(label):
    line = {
        "source-ref": "s3://b/camlabel/images/abc.png",
        "camlabel-image-id": "abc",
        "camlabel-cam-ref": "s3://b/camlabel/cam-masks/abc-0123.png",
        "camlabel-cam-ref-metadata": {
            "internal-color-map": color_map_for(label),
            "type": "groundtruth/semantic-segmentation",
        },
    }
    parsed = render(
        "adjustment.liquid.html",
        {"taskObject": line["source-ref"], "labels": [label], "manifestLine": line},
    )
    seg = parsed.elements["crowd-semantic-segmentation"]
    assert seg["name"] == "crowd-semantic-segmentation"
    assert seg["src"] == signed("s3://b/camlabel/images/abc.png")
    assert json.loads(seg["labels"]) == [label]
    initial = json.loads(seg["initial-value"])
    assert initial == {
        "src": signed("s3://b/camlabel/cam-masks/abc-0123.png"),
        "labelMappings": {label: {"color": "#2ca02c"}},
    }
    assert {"full-instructions", "short-instructions"} <= set(parsed.tags)
    assert "script" in parsed.tags


def test_adjustment_template_with_several_prior_classes_keeps_json_valid():
    cmap = {
        "0": {"class-name": "BACKGROUND", "hex-color": "#ffffff"},
        "1": {"class-name": "Opacity", "hex-color": "#2ca02c"},
        "2": {"class-name": "Effusion", "hex-color": "#1f77b4"},
    }
    line = {
        "source-ref": "s3://b/i.png",
        "camlabel-cam-ref": "s3://b/m.png",
        "camlabel-cam-ref-metadata": {"internal-color-map": cmap},
    }
    parsed = render(
        "adjustment.liquid.html",
        {"taskObject": "s3://b/i.png", "labels": ["Opacity"], "manifestLine": line},
    )
    initial = json.loads(parsed.elements["crowd-semantic-segmentation"]["initial-value"])
    assert initial["labelMappings"] == {
        "Opacity": {"color": "#2ca02c"},
        "Effusion": {"color": "#1f77b4"},
    }


@pytest.mark.parametrize("label", ["Opacity", HOSTILE_LABEL])
def test_polygon_template(label):
    polys = [
        {
            "label": label,
            "vertices": [{"x": 10, "y": 20}, {"x": 50.5, "y": 20}, {"x": 30, "y": 60}],
        },
        {
            "label": label,
            "vertices": [{"x": 100, "y": 100}, {"x": 120, "y": 100}, {"x": 110, "y": 130}],
        },
    ]
    parsed = render(
        "polygon.liquid.html",
        {"taskObject": "s3://b/camlabel/images/abc.png", "labels": [label], "initialValue": polys},
    )
    poly = parsed.elements["crowd-polygon"]
    assert poly["name"] == "annotatedResult"
    assert poly["src"] == signed("s3://b/camlabel/images/abc.png")
    assert json.loads(poly["labels"]) == [label]
    assert json.loads(poly["initial-value"]) == polys
    assert {"full-instructions", "short-instructions"} <= set(parsed.tags)


def test_polygon_template_renders_the_pre_lambda_output():
    """The pre-annotation Lambda's taskInput is exactly what the template needs."""
    from camlabel.lambdas.gt_polygon_pre import lambda_handler

    line = {
        "source-ref": "s3://b/i.png",
        "camlabel-image-id": "abc",
        "camlabel-labels": ["Opacity"],
        "camlabel-cam-polygons": {
            "annotatedResult": {
                "inputImageProperties": {"height": 50, "width": 40},
                "polygons": [
                    {
                        "label": "Opacity",
                        "vertices": [{"x": 1, "y": 2}, {"x": 9, "y": 2}, {"x": 5, "y": 8}],
                    }
                ],
            }
        },
    }
    out = lambda_handler({"version": "2018-10-16", "labelingJobArn": "arn:x", "dataObject": line})
    parsed = render("polygon.liquid.html", out["taskInput"])
    assert (
        json.loads(parsed.elements["crowd-polygon"]["initial-value"])
        == line["camlabel-cam-polygons"]["annotatedResult"]["polygons"]
    )


def test_strict_undefined_catches_a_missing_input():
    text = template_path("groundtruth", "polygon.liquid.html").read_text(encoding="utf-8")
    with pytest.raises(Exception, match="initialValue"):
        environment().from_string(text).render(
            task={"input": {"taskObject": "s3://b/i.png", "labels": ["x"]}}
        )
