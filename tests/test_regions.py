"""Defect regions come out as boxes in original-frame pixels."""

from __future__ import annotations

import numpy as np

from edged.regions import find_regions


def test_box_is_scaled_to_frame_and_offset_by_roi() -> None:
    amap = np.zeros((32, 32), np.float32)
    amap[8:12, 16:20] = 1.0  # rows 8-11, cols 16-19
    amap[25:27, 2:4] = 0.7
    regions = find_regions(amap, 0.5, frame_hw=(64, 128), offset=(100, 10), min_area=1)
    assert len(regions) == 2
    r = regions[0]  # strongest first
    assert (r.x, r.y, r.w, r.h) == (100 + 64, 10 + 16, 16, 8)
    assert r.area == 16 * 4 * 2 and r.peak == 1.0
    assert regions[1].peak == np.float32(0.7)


def test_small_regions_and_clean_maps_give_nothing() -> None:
    amap = np.zeros((16, 16), np.float32)
    assert find_regions(amap, 0.5, (16, 16)) == []
    amap[3, 3] = 1
    assert find_regions(amap, 0.5, (16, 16), min_area=4) == []
    assert len(find_regions(amap, 0.5, (16, 16), min_area=1)) == 1
