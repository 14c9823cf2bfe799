"""``segdeploy train``: options are :class:`TrainConfig`'s fields, and so are their defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperArgument

from segdeploy.cli.console import console
from segdeploy.cli.tables import print_training_summary
from segdeploy.core.errors import SegdeployError
from segdeploy.train.config import TrainConfig
from segdeploy.train.plan import (
    DEFAULT_TIME_BUDGET_S,
    RARE_CLASS_SHARE,
    SYNTHETIC_BATCH,
    SYNTHETIC_EPOCHS,
    parse_duration,
)

_FITTED = "Default: fitted to the data, printed before the first epoch"

# The option defaults are TrainConfig's: a dataclass keeps each field's default as a class
# attribute, so TrainConfig.epochs is the default number of epochs.


def train(
    ctx: typer.Context,
    arch: Annotated[str, typer.Argument(help="Registered architecture (see `segdeploy models`).")],
    data: Annotated[str, typer.Option(help="'synthetic' or a data folder.")] = TrainConfig.data,
    variant: Annotated[
        str | None,
        typer.Option(
            help="Model size (see `segdeploy models`) \\[default: the architecture's].",
            show_default=False,
        ),
    ] = TrainConfig.variant,
    epochs: Annotated[
        int | None, typer.Option(min=1, help=f"{_FITTED} (synthetic: {SYNTHETIC_EPOCHS}).")
    ] = TrainConfig.epochs,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help=f"{_FITTED} (synthetic: {SYNTHETIC_BATCH}).")
    ] = TrainConfig.batch_size,
    img_size: Annotated[
        int | None,
        typer.Option(help=f"Square training size, a multiple of the size multiple. {_FITTED}."),
    ] = TrainConfig.img_size,
    lr: float = TrainConfig.lr,
    loss: Annotated[
        str | None,
        typer.Option(
            help="ce, dice or ce+dice (segmentation). Default: ce+dice when a class holds "
            f"under {RARE_CLASS_SHARE:.0%} of the labelled pixels, else ce (synthetic: ce+dice)."
        ),
    ] = TrainConfig.loss,
    time: Annotated[
        str | None,
        typer.Option(
            "--time",
            help="Training time, e.g. 90s, 5m, 1h: epochs fitted to it after timing the first two, "
            f"stopping early on a plateau (--epochs wins). Default for folders: "
            f"{DEFAULT_TIME_BUDGET_S // 60} min.",
        ),
    ] = None,
    class_weights: Annotated[
        str | None,
        typer.Option(
            help="'auto' (median frequency, clipped) or 'none' \\[default: auto for "
            "segmentation folders].",
            show_default=False,
        ),
    ] = TrainConfig.class_weights,
    cache_mb: Annotated[
        int, typer.Option(min=0, help="Keep decoded training data in memory up to this size.")
    ] = TrainConfig.cache_mb,
    out: Annotated[
        Path | None, typer.Option(help="Checkpoint path \\[default: ARCH.pt].")
    ] = TrainConfig.out,
    device: str = TrainConfig.device,
    seed: int = TrainConfig.seed,
    pretrained: Annotated[
        Path | None,
        typer.Option(help="Local weights file or folder (resnet18, DeepLabV3, SegFormer)."),
    ] = TrainConfig.pretrained,
    finetune: Annotated[
        str | None,
        typer.Option(
            help="Trainable part: fc, layer4 or all (resnet18); head, head+last or all "
            "(DeepLabV3, SegFormer) \\[default: the head with --pretrained, else all].",
            show_default=False,
        ),
    ] = TrainConfig.finetune,
    classes: Annotated[
        str | None, typer.Option(help="Comma-separated class names for a mask folder.")
    ] = None,
    train_samples: Annotated[
        int, typer.Option(help="Synthetic training images.")
    ] = TrainConfig.train_samples,
    val_samples: Annotated[
        int, typer.Option(help="Synthetic validation images.")
    ] = TrainConfig.val_samples,
    mask_values: Annotated[
        str | None,
        typer.Option(help="Mask values in class order, e.g. 0,255 for binary 0/255 masks."),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the run saved in this checkpoint.")
    ] = TrainConfig.resume,
    force: Annotated[
        bool, typer.Option(help="Replace an existing checkpoint.")
    ] = TrainConfig.force,
    nproc: Annotated[
        int,
        typer.Option(
            help="Processes that train together on this machine (DistributedDataParallel "
            "started by torchrun; one per GPU with --device cuda). 1: this process alone."
        ),
    ] = 1,
) -> None:
    """Train ARCH and write a self-describing checkpoint (weights + model card).\f

    Longer than 60 lines because its signature declares the command's twenty-three parameters;
    the body only builds a TrainConfig from them, or starts ``--nproc`` processes that do.
    (Click shows no help text after the form feed.)
    """
    from segdeploy.train import RichTrainProgress
    from segdeploy.train import train as run_training
    from segdeploy.train.distributed import process_rank

    config = TrainConfig(
        arch=arch,
        data=data,
        variant=variant,
        epochs=epochs,
        batch_size=batch_size,
        img_size=img_size,
        lr=lr,
        loss=loss,
        time_budget_s=None if time is None else parse_duration(time),
        class_weights=class_weights,
        cache_mb=cache_mb,
        out=out,
        device=device,
        seed=seed,
        pretrained=pretrained,
        finetune=finetune,
        classes=tuple(c.strip() for c in classes.split(",")) if classes else TrainConfig.classes,
        train_samples=train_samples,
        val_samples=val_samples,
        mask_values=_int_tuple(mask_values) if mask_values else TrainConfig.mask_values,
        resume=resume,
        force=force,
    )
    if nproc != 1:
        raise typer.Exit(_launch(ctx, config, nproc))
    # Under torchrun every rank runs this command; rank 0 alone prints (plan, progress, summary).
    main = process_rank() == 0
    result = run_training(config, progress=RichTrainProgress(console) if main else None)
    if main:
        print_training_summary(result)


def _launch(ctx: typer.Context, config: TrainConfig, nproc: int) -> int:
    """Check what can be checked once, then run this command without ``--nproc`` in ``nproc``
    processes; the run's exit code."""
    from segdeploy.data.folders import folder_layout
    from segdeploy.models import get_spec
    from segdeploy.train.distributed import check_nproc, launch
    from segdeploy.train.loop import check_config, check_output

    check_nproc(nproc, config.device)
    # Bad input is one sentence here, not one per process.
    spec = get_spec(config.arch)
    check_config(config, spec)
    check_output(config)
    if config.data != "synthetic":  # a missing folder or class list (the items: in the ranks)
        folder_layout(config.data, spec.task, config.classes)
    return launch(nproc, "segdeploy", ["train", *_relaunch_arguments(ctx)], config.device)


def _relaunch_arguments(ctx: typer.Context) -> list[str]:
    """The command line of ``ctx``'s command as given, ``--nproc`` left out: options as
    ``--name=value`` (a value may start with ``-``), then ``--`` and the arguments."""
    options, arguments = [], []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if param.name == "nproc" or source is None or source.name == "DEFAULT":
            continue
        value = ctx.params[param.name]
        if isinstance(param, TyperArgument):
            arguments.append(str(value))
        elif getattr(param, "is_flag", False):
            options.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            options.append(f"{param.opts[0]}={value}")
    return [*options, "--", *arguments]


def _int_tuple(text: str) -> tuple[int, ...]:
    """``"0,255"`` -> ``(0, 255)``, or one sentence when it is not a list of integers."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SegdeployError(f"--mask-values expects integers like 0,255; found '{text}'") from None
