"""segdeploy's training defaults against the plain loop on one suite set, in the same budget."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

#: Wall seconds per run: the two runs take about 100 s on 2 cores, data building included.
BUDGET = 40.0
#: The plain loop's best learning rate on binary_coins in the suite measurement
#: (benchmarks/README.md, "Suite: defaults vs plain loop on different data").
PLAIN_LR = 1e-2
#: Least share of the plain loop's best mIoU segdeploy's defaults must reach within the plain
#: loop's wall time. Measured (shared 2-core CPU, noisy): 0.99 at a 15 s budget, 0.95 at 45 s
#: (README); 0.85 leaves room for
#: a shared, noisy CI machine while still failing a default that learns clearly worse.
SHARE = 0.85
# Weak guard, knowingly: with --lr 0.3 forced on segdeploy the share was still 0.98 here, so this
# catches a default that fails outright (broken loss, data path, stop), not a mistuned one.


@pytest.mark.slow
def test_defaults_reach_most_of_the_plain_loops_best_on_binary_coins(tmp_path):
    """``segdeploy train unet --data binary_coins`` (no tuning flags; ``--mask-values 0,255``
    describes the 0/255 masks) must reach 0.85 (``SHARE``) of the plain loop's best validation mIoU
    (lr ``PLAIN_LR``) within the plain loop's wall time, both under ``BUDGET`` seconds."""
    import suite_data
    import suite_runner

    data = suite_data.binary_coins(tmp_path / "binary_coins")
    (tmp_path / "binary_coins_run").mkdir()
    result = suite_runner.run_set("binary_coins_run", data, BUDGET, [PLAIN_LR], tmp_path, extra=[])
    summary = result["summary"]
    assert summary["plain_best"] > 0.5, (
        summary
    )  # the plain loop learnt: the comparison means something
    assert summary["share_of_plain_best"] >= SHARE, summary
