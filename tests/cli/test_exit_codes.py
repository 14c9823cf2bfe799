"""The exit-code table: one place, looked up by command and error type."""

from __future__ import annotations

from segdeploy.cli.errors import (
    EXIT_ERROR,
    EXIT_PROVIDER_UNAVAILABLE,
    exit_code,
)
from segdeploy.core.errors import (
    DataError,
    ParityError,
    ProviderUnavailableError,
    SegdeployError,
)


def test_bench_alone_exits_2_when_cuda_cannot_run():
    unavailable = ProviderUnavailableError("CUDA was asked for")
    assert exit_code("bench", unavailable) == EXIT_PROVIDER_UNAVAILABLE == 2
    assert exit_code("predict", unavailable) == EXIT_ERROR == 1
    assert exit_code("verify", unavailable) == 1


def test_every_other_error_exits_1():
    for error in (SegdeployError("x"), DataError("x"), ParityError("x", report=None)):
        assert exit_code("bench", error) == 1 and exit_code("export", error) == 1
