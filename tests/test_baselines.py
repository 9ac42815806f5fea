"""Content-free lookups: what they predict on hand-made items."""

from __future__ import annotations

import numpy as np
import pytest

from vlm3.eval.baselines import DepthItem, DepthLookups, identity_pose_direction


def _items() -> list[DepthItem]:
    # Depth depends on the row and, for the lower half, on the image width (a field-of-view effect).
    out = []
    for w in (56, 112):
        for ny in range(0, 100, 5):
            depth = 8.0 if ny < 50 else (2.0 if w == 56 else 4.0)
            out.append(DepthItem(10, ny, w, w, depth))
    return out


def test_lookups_predict_what_they_read() -> None:
    lk = DepthLookups(_items(), n_coords=100, bins=10)
    assert lk.predict("constant median", DepthItem(0, 0, 56, 56, 1.0)) == pytest.approx(np.median([it.depth for it in _items()]))
    assert lk.predict("row-only", DepthItem(0, 10, 56, 56, 1.0)) == 8.0
    assert lk.predict("row-only", DepthItem(0, 80, 56, 56, 1.0)) == 3.0  # median of 2 and 4 across sizes
    assert lk.predict("row + image size", DepthItem(0, 80, 56, 56, 1.0)) == 2.0
    assert lk.predict("row + image size", DepthItem(0, 80, 112, 112, 1.0)) == 4.0
    # An unseen size falls back to the row lookup.
    assert lk.predict("row + image size", DepthItem(0, 80, 84, 84, 1.0)) == 3.0
    preds = lk.predict_all(_items())
    assert set(preds) == set(DepthLookups.NAMES) and all(len(v) == len(_items()) for v in preds.values())
    with pytest.raises(KeyError, match="unknown lookup"):
        lk.predict("oracle", _items()[0])


def test_lookups_refuse_a_wrong_coordinate_range() -> None:
    items = [DepthItem(0, 1500, 56, 56, 3.0)]
    with pytest.raises(ValueError, match="n_coords=100"):
        DepthLookups(items, n_coords=100)
    with pytest.raises(ValueError, match="at least one"):
        DepthLookups([], n_coords=100)


def test_identity_pose_direction_is_unit_mean() -> None:
    d = identity_pose_direction([[1, 0, 0], [1, 0, 0], [0, 0, 1]])
    assert np.linalg.norm(d) == pytest.approx(1.0) and d[0] > d[2] > 0
    np.testing.assert_allclose(identity_pose_direction([]), [0, 0, 1])


def test_curve_marks_absorb_evaluation_lag() -> None:
    from vlm3.eval.heldout import Curve

    curve = Curve("x", [{"train_seconds": 60.4, "delta1": 0.5}, {"train_seconds": 120.9, "delta1": 0.7}, {"train_seconds": 170.0, "delta1": 0.8}])
    assert curve.at_minutes(0.5) is None
    assert curve.at_minutes(1)["delta1"] == 0.5  # logged at the first step after the 1-minute mark
    assert curve.at_minutes(2)["delta1"] == 0.7
    assert curve.at_minutes(5)["delta1"] == 0.8
