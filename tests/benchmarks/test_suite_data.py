"""The benchmark suite's data sets have the properties benchmarks/suite_data.py states, and
segdeploy's own folder checks accept each (built at reduced counts; pixels are real)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import suite_data  # noqa: E402


def _shares(summary) -> dict[str, float]:
    total = sum(summary.per_class.values())
    return {name: n / total for name, n in summary.per_class.items()}


def test_small_objects_are_small_and_strongly_imbalanced(tmp_path):
    found = suite_data.read_back(suite_data.small_objects(tmp_path / "s", scale=0.1))
    for split in ("train", "val"):
        shares = _shares(found[split])
        objects = [shares[n] for n in suite_data.SMALL_OBJECT_CLASSES[1:]]
        assert all(0 < share <= 0.02 for share in objects), shares
        assert shares["background"] / min(objects) >= 100, shares
        assert not found[split].missing_classes()


def test_binary_masks_hold_only_0_and_255_and_segdeploy_reads_them_as_two_classes(tmp_path):
    root = suite_data.binary_coins(tmp_path / "b", scale=0.25)
    values = set()
    for mask in (root / "train" / "masks").glob("*.png"):
        values |= set(np.unique(np.asarray(Image.open(mask))).tolist())
    assert values == {0, 255}
    found = suite_data.read_back(root)
    assert found["train"].images == 8 and found["val"].images == 2
    assert 0.1 < _shares(found["train"])["coin"] < 0.6  # read through --mask-values 0,255


def test_many_classes_and_classification_folders(tmp_path):
    many = suite_data.read_back(suite_data.many_classes(tmp_path / "m", scale=0.1))
    assert len(many["train"].per_class) >= 10
    photos = suite_data.read_back(suite_data.photos22(tmp_path / "p", scale=0.1))
    assert len(photos["train"].per_class) >= 20
    assert set(photos["train"].per_class.values()) == {2} and photos["val"].images == 22
    faces = suite_data.read_back(suite_data.faces(tmp_path / "f", scale=0.1))
    assert faces["train"].per_class == {"face": 7, "non_face": 7}


def test_few_and_large_images(tmp_path):
    few = suite_data.read_back(suite_data.few_images(tmp_path / "few"))
    assert few["train"].images <= 40
    large = suite_data.read_back(suite_data.large_images(tmp_path / "large", scale=0.25))
    assert min(large["train"].min_size) >= 1000 and min(large["val"].min_size) >= 1000


def test_held_aside_sets_are_named_and_known():
    assert len(suite_data.HELD_ASIDE) >= 2
    assert {suite_data.SETS[n].status for n in suite_data.HELD_ASIDE} == {"held aside"}
    with pytest.raises(SystemExit, match="unknown set"):
        suite_data.build(["no_such_set"], Path("unused"))
