"""Training: any registered architecture on synthetic or folder data, to a self-describing ``.pt``.

:func:`train` is what ``segdeploy train`` calls. It validates on the whole validation set every
epoch (one confusion matrix, not an average of per-batch scores) and keeps the best checkpoint by
mIoU (segmentation) or accuracy (classification).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.utils.data import DataLoader

from segdeploy.core.card import ModelCard
from segdeploy.core.errors import SegdeployError
from segdeploy.core.metrics import IGNORE_INDEX, ConfusionMatrix
from segdeploy.models import create_model, get_spec
from segdeploy.train.checkpoint import save_checkpoint
from segdeploy.train.config import TrainConfig
from segdeploy.train.datasets import build_datasets, compute_class_weights
from segdeploy.train.losses import build_loss


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    metric: float
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What :func:`train` produced: the checkpoint, its card and the per-epoch history."""

    checkpoint: Path
    card: ModelCard
    history: list[EpochRecord]
    metric_name: str
    best_metric: float
    best_epoch: int
    seconds: float


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _lr_lambda(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def freeze_frozen_batchnorm(model: nn.Module) -> None:
    """Keep BatchNorm layers whose parameters are frozen in eval mode (fixed running stats)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()


def _training_loss(model: nn.Module, images, targets, criterion) -> torch.Tensor:
    # DeepLab's auxiliary head helps training only; torchvision's reference weights it 0.5.
    if hasattr(model, "forward_with_aux"):
        out, aux = model.forward_with_aux(images)
        loss = criterion(out, targets)
        return loss if aux is None else loss + 0.5 * criterion(aux, targets)
    return criterion(model(images), targets)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, task: str, num_classes: int, device: str):
    """Metrics over the whole loader: a :class:`SegmentationMetrics` or an accuracy float."""
    model.eval()
    if task == "segmentation":
        confusion = ConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)
        for images, masks in loader:
            pred = model(images.to(device)).argmax(1).cpu().numpy()
            confusion.update(pred, masks.numpy())
        return confusion.compute()
    correct = total = 0
    for images, labels in loader:
        pred = model(images.to(device)).argmax(1).cpu()
        correct += int((pred == labels).sum())
        total += labels.numel()
    return correct / max(1, total)


def train(config: TrainConfig, console: Console | None = None) -> TrainResult:
    """Train ``config.arch`` and write the best checkpoint; see :class:`TrainConfig`."""
    console = console or Console()
    spec = get_spec(config.arch)
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise SegdeployError("--device cuda was asked for but PyTorch sees no CUDA device")
    if config.epochs < 1 or config.batch_size < 1:
        raise SegdeployError("--epochs and --batch-size must be at least 1")
    size = config.img_size or spec.train_size
    if size % 16:
        raise SegdeployError(f"--img-size must be a multiple of 16, found {size}")
    out = Path(config.out or f"{config.arch}.pt")
    generator = seed_everything(config.seed)

    train_set, val_set, class_names, data_description = build_datasets(config, spec.task, size)
    model_kwargs = spec.variant_kwargs(config.variant)
    model = create_model(config.arch, num_classes=len(class_names), **model_kwargs)
    if config.pretrained is not None:
        if spec.load_pretrained is None:
            raise SegdeployError(f"'{config.arch}' does not take --pretrained weights")
        spec.load_pretrained(model, config.pretrained)
    if spec.finetune is not None:
        spec.finetune(model, config.finetune)
    model.to(config.device)

    if spec.task == "segmentation":
        weights = None
        if config.class_weights == "auto":
            weights = compute_class_weights(train_set, len(class_names), max_items=256)
        elif config.class_weights not in (None, "none"):
            raise SegdeployError(
                f"--class-weights must be 'auto' or 'none', found {config.class_weights!r}"
            )
        criterion = build_loss(config.loss, class_weights=weights, ignore_index=IGNORE_INDEX)
        metric_name = "mIoU"
    else:
        criterion = nn.CrossEntropyLoss()
        metric_name = "accuracy"
    criterion.to(config.device)

    train_loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(train_set) > config.batch_size,
        generator=generator,
    )
    val_loader = DataLoader(val_set, batch_size=config.batch_size)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    total_steps = config.epochs * len(train_loader)
    warmup = max(1, int(config.warmup_fraction * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, warmup))

    card = ModelCard(
        arch=config.arch,
        task=spec.task,
        class_names=class_names,
        model_kwargs=model_kwargs,
    )
    history: list[EpochRecord] = []
    best_metric, best_epoch = -1.0, 0
    started = time.perf_counter()
    columns = (
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[metric]}"),
        TimeElapsedColumn(),
    )
    with Progress(
        *columns, console=console, transient=False, disable=not console.is_terminal
    ) as progress:
        for epoch in range(1, config.epochs + 1):
            epoch_started = time.perf_counter()
            bar = progress.add_task(
                "train",
                total=len(train_loader),
                epoch=f"{epoch}/{config.epochs}",
                loss=0.0,
                metric="",
            )
            model.train()
            freeze_frozen_batchnorm(model)
            running = 0.0
            for step, (images, targets) in enumerate(train_loader, start=1):
                images, targets = images.to(config.device), targets.to(config.device)
                loss = _training_loss(model, images, targets, criterion)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(trainable, config.grad_clip)
                optimizer.step()
                scheduler.step()
                running += loss.item()
                progress.update(bar, advance=1, loss=running / step)
            result = evaluate(model, val_loader, spec.task, len(class_names), config.device)
            if spec.task == "segmentation":
                metric, details = result.miou, result.to_dict()
            else:
                metric, details = float(result), {"accuracy": float(result)}
            record = EpochRecord(
                epoch,
                running / len(train_loader),
                metric,
                time.perf_counter() - epoch_started,
                details,
            )
            history.append(record)
            improved = metric > best_metric
            summary = f"val {metric_name} {metric:.4f}{' *' if improved else ''}"
            progress.update(bar, metric=summary)
            if not console.is_terminal:
                # Rich draws no live bar into pipes and CI logs: leave one line per epoch there.
                console.print(
                    f"epoch {epoch}/{config.epochs}: loss {record.train_loss:.4f}, {summary} "
                    f"({record.seconds:.1f}s)"
                )
            if improved:
                best_metric, best_epoch = metric, epoch
                card = card.replace(
                    training={
                        "epochs": config.epochs,
                        "best_epoch": epoch,
                        "metric": metric_name,
                        "best_metric": round(metric, 6),
                        "validation": details,
                        "data": data_description,
                        "img_size": size,
                        "loss": config.loss if spec.task == "segmentation" else "ce",
                        "seed": config.seed,
                        "variant": config.variant,
                        **({"finetune": config.finetune} if spec.finetune else {}),
                        **(
                            {"pretrained": Path(config.pretrained).name}
                            if config.pretrained
                            else {}
                        ),
                    }
                )
                save_checkpoint(model, card, out)
    return TrainResult(
        checkpoint=out,
        card=card,
        history=history,
        metric_name=metric_name,
        best_metric=best_metric,
        best_epoch=best_epoch,
        seconds=time.perf_counter() - started,
    )
