"""``python -m segdeploy``: the command line, also as torchrun starts it.

``torchrun --nproc-per-node N -m segdeploy train ...`` (or ``segdeploy train --nproc N ...``)
runs this module in N processes that train one model together
(:mod:`segdeploy.train.distributed`); the train command prints on rank 0 only, and every rank
reports its errors on standard error.
"""

from __future__ import annotations

from segdeploy.cli import main

if __name__ == "__main__":
    main()
