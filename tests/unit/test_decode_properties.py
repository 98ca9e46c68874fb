"""Properties of the pure decoding core, over generated tensors and boxes (hypothesis)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from edge.vision.decode import Candidate
from edge.vision.decode.blazeface import BlazeFaceDecoder
from edge.vision.decode.nms import hard_nms, iou, weighted_nms
from edge.vision.decode.ulfd import UlfdDecoder
from edge.vision.manifest import REPO_MODELS
from edge.vision.geometry import Fit
from edge.vision.tiling import tile_grid

MANIFEST = json.loads((REPO_MODELS / "manifest.json").read_text())["models"]
SHORT = BlazeFaceDecoder.from_manifest(MANIFEST["blazeface-short"])
ULFD = UlfdDecoder.from_manifest(MANIFEST["ulfd-rfb320"])
IDENTITY = Fit(1.0, 1.0, 0.0, 0.0)

coord = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def candidates(draw: st.DrawFn) -> Candidate:
    x0, y0 = draw(coord), draw(coord)
    w, h = draw(st.floats(0.0, 0.5)), draw(st.floats(0.0, 0.5))
    kps = tuple(draw(st.lists(coord, min_size=4, max_size=4)))
    return Candidate(draw(st.floats(0.01, 1.0)), x0, y0, x0 + w, y0 + h, kps)


@given(st.lists(candidates(), max_size=30), st.floats(0.05, 0.95))
def test_weighted_nms_keeps_the_best_scores_in_order_and_boxes_in_range(cands: list[Candidate], threshold: float) -> None:
    out = weighted_nms(cands, threshold)
    assert len(out) <= len(cands)
    assert [c.score for c in out] == sorted((c.score for c in out), reverse=True)
    assert {c.score for c in out} <= {c.score for c in cands}
    if cands:
        assert out[0].score == max(c.score for c in cands)
    for c in out:  # a weighted mean of boxes inside [0, 1.5] stays there
        assert -1e-9 <= c.x0 <= c.x1 <= 1.5 + 1e-9 and -1e-9 <= c.y0 <= c.y1 <= 1.5 + 1e-9


@given(st.lists(candidates(), max_size=30), st.floats(0.05, 0.95))
def test_hard_nms_output_is_a_subset_with_no_pair_above_threshold(cands: list[Candidate], threshold: float) -> None:
    out = hard_nms(cands, threshold)
    assert set(out) <= set(cands)
    for i, a in enumerate(out):
        for b in out[i + 1:]:
            assert iou(a, b) <= threshold


def hot(rng: np.random.Generator, count: int, hot: int, low: float, high: float, cold: float) -> np.ndarray:
    """Scores for `count` anchors: most at `cold`, `hot` of them drawn from [low, high]."""
    values = np.full(count, cold, np.float32)
    values[rng.choice(count, size=hot, replace=False)] = rng.uniform(low, high, size=hot)
    return values


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 60), st.floats(0.05, 0.95), st.floats(1.0, 100.0))
def test_blazeface_decoder_never_fails_and_respects_the_threshold(seed: int, n_hot: int, threshold: float, spread: float) -> None:
    rng = np.random.default_rng(seed)
    boxes = rng.normal(0, spread, size=(1, 896, 16)).astype(np.float32)
    logits = hot(rng, 896, n_hot, -20.0, 20.0, -10.0).reshape(1, 896, 1)
    out = SHORT.decode([boxes, logits], threshold, IDENTITY)
    assert len(out) <= int((logits.reshape(-1) >= np.log(threshold / (1 - threshold))).sum())
    for c in out:
        assert threshold - 1e-6 <= c.score <= 1.0
        assert len(c.keypoints) == 12
        assert all(np.isfinite([c.x0, c.y0, c.x1, c.y1, *c.keypoints]))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 200), st.floats(0.3, 0.95))
def test_ulfd_decoder_never_fails_and_keeps_non_overlapping_faces(seed: int, n_hot: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    boxes = rng.normal(0, 2, size=(1, 4420, 4)).astype(np.float32)
    face = hot(rng, 4420, n_hot, 0.0, 1.0, 0.01)
    scores = np.stack([1 - face, face], axis=-1)[None]
    out = ULFD.decode([boxes, scores], threshold, IDENTITY)
    assert len(out) <= int((face >= threshold).sum())
    for c in out:
        assert c.score >= threshold and c.x1 >= c.x0 and c.y1 >= c.y0 and c.keypoints == ()
    for i, a in enumerate(out):
        for b in out[i + 1:]:
            assert iou(a, b) <= ULFD.iou_threshold


@given(st.floats(0.1, 1.0), st.floats(0.1, 1.0), st.floats(0.0, 0.4), st.floats(0.0, 0.4),
       coord, coord, st.floats(0.05, 1.0), st.floats(0.05, 1.0), coord)
def test_fit_within_composes_the_region_and_the_fit(sx: float, sy: float, ox: float, oy: float,
                                                    x0: float, y0: float, w: float, h: float, u: float) -> None:
    fit = Fit(sx, sy, ox, oy)
    region = fit.within(x0, y0, x0 + w, y0 + h)
    # model coordinate u -> region-normalised by `fit` -> frame by the region's placement
    expected = x0 + (u - ox) / sx * w
    assert np.isclose((u - region.offset_x) / region.scale_x, expected, rtol=1e-9, atol=1e-9)


@settings(deadline=None)  # a 2000x2000 frame in 32 px tiles is thousands of tiles: slow, not wrong
@given(st.integers(16, 2000), st.integers(16, 2000), st.integers(32, 256), st.data())
def test_tiles_always_cover_the_frame_and_stay_inside_it(width: int, height: int, tile: int, data: st.DataObject) -> None:
    overlap = data.draw(st.integers(0, tile - 1))
    tiles = tile_grid(width, height, tile, overlap)
    covered = np.zeros((height, width), bool)
    for t in tiles:
        assert 0 <= t.x0 < t.x1 <= width and 0 <= t.y0 < t.y1 <= height
        covered[t.y0:t.y1, t.x0:t.x1] = True
    assert covered.all()


def test_blazeface_decoding_matches_mediapipes_formulas() -> None:
    """The folded per-anchor arithmetic against the textbook decoding, written out with numpy:
    model coordinates = raw / scale * anchor size + anchor centre, then back through the fit."""
    from edge.vision.decode.blazeface import ssd_anchors

    params = MANIFEST["blazeface-full"]
    decoder = BlazeFaceDecoder.from_manifest(params)
    anchors = ssd_anchors(params["anchors"]).astype(np.float64)
    dec = params["box_decoding"]
    rng = np.random.default_rng(7)
    boxes = rng.normal(0, 20, size=(1, 2304, 16)).astype(np.float32)
    logits = np.full(2304, -10.0, np.float32)
    far_apart = [100, 900, 2000]  # anchors far enough apart that no two clusters merge
    logits[far_apart] = 4.0
    fit = Fit(0.8, 0.6, 0.1, 0.2)
    out = decoder.decode([boxes, logits.reshape(1, -1, 1)], 0.5, fit)
    assert len(out) == 3
    for i, c in zip(far_apart, sorted(out, key=lambda c: c.y0)):
        raw = boxes[0, i].astype(np.float64)
        cx = raw[0] / dec["x_scale"] * anchors[i, 2] + anchors[i, 0]
        cy = raw[1] / dec["y_scale"] * anchors[i, 3] + anchors[i, 1]
        w, h = raw[2] / dec["w_scale"] * anchors[i, 2], raw[3] / dec["h_scale"] * anchors[i, 3]
        kx = raw[4::2] / dec["x_scale"] * anchors[i, 2] + anchors[i, 0]
        ky = raw[5::2] / dec["y_scale"] * anchors[i, 3] + anchors[i, 1]
        expected = [(cx - w / 2 - fit.offset_x) / fit.scale_x, (cy - h / 2 - fit.offset_y) / fit.scale_y,
                    (cx + w / 2 - fit.offset_x) / fit.scale_x, (cy + h / 2 - fit.offset_y) / fit.scale_y]
        np.testing.assert_allclose([c.x0, c.y0, c.x1, c.y1], expected, atol=1e-5)
        np.testing.assert_allclose(c.keypoints[0::2], (kx - fit.offset_x) / fit.scale_x, atol=1e-5)
        np.testing.assert_allclose(c.keypoints[1::2], (ky - fit.offset_y) / fit.scale_y, atol=1e-5)
        assert c.score == 1.0 / (1.0 + np.exp(-4.0))


def test_a_model_with_the_wrong_anchor_count_is_refused_by_name() -> None:
    boxes, logits = np.zeros((1, 100, 16), np.float32), np.zeros((1, 100, 1), np.float32)
    with pytest.raises(ValueError, match="100 scores for 896 anchors"):
        SHORT.decode([boxes, logits], 0.5, IDENTITY)
