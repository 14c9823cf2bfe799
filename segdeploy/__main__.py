"""``python -m segdeploy``: the command line, also as torchrun starts it.

``torchrun --nproc-per-node N -m segdeploy train ...`` runs this module in N processes that train
one model together (:mod:`segdeploy.train.distributed`). Only rank 0 prints results: the others
keep standard output quiet (errors still go to standard error, so a failing rank says why).
"""

from __future__ import annotations

import os


def main() -> None:
    """Run the ``segdeploy`` command line; quiet on every rank but 0 of a torchrun launch."""
    if int(os.environ.get("RANK", "0")) != 0:
        from segdeploy.cli.console import console

        console.quiet = True
    from segdeploy.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
