"""Training: any registered architecture on synthetic or folder data, to a self-describing ``.pt``.

:func:`train` is what ``segdeploy train`` calls. It validates on the whole validation set every
epoch (one confusion matrix, not an average of per-batch scores) and keeps the best checkpoint by
mIoU (segmentation) or accuracy (classification).

Validation measures what ``predict`` will do: every validation image at its own size, through
the input contract the card declares (:func:`~segdeploy.train.config.training_input_contract`),
with :class:`~segdeploy.train.inference.TorchPredictor` and
:func:`~segdeploy.core.metrics.score_predictions`, the implementation ``evaluate`` uses, on the
items of :func:`~segdeploy.data.samples.labelled_images`. So the validation result in the card is
what evaluating the checkpoint on the same split gives. Its sections are functions of their own:
:func:`prepare_training` (checks, data, model, loss, loaders, optimiser), :func:`train_one_epoch`,
:func:`validate` and :func:`training_record` (the card's record of the best epoch); progress is
reported to a :class:`~segdeploy.train.progress.TrainProgress`.

No lost work: an existing output is replaced only with ``config.force`` (checked before anything
is built); after every epoch the best checkpoint (on improvement) and then the run's state file
(:func:`~segdeploy.train.checkpoint.state_path`: last weights +
:func:`~segdeploy.train.resume.trainer_state`) are written atomically, so Ctrl-C leaves both
whole. ``config.resume`` continues such a run from the epoch after its last finished one, bit
for bit as if it had never stopped (:mod:`segdeploy.train.resume`).

Started by torchrun with several processes, :func:`train` trains data-parallel: the loop calls a
few hooks of :class:`~segdeploy.train.distributed.DistributedContext` (sampler, DDP-wrapped loss,
summed confusion matrices, rank-0-only writes), which do nothing in a single process.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from segdeploy.core.card import ModelCard
from segdeploy.core.errors import SegdeployError
from segdeploy.core.metrics import IGNORE_INDEX, TaskScore, confusion_of_pairs, score_confusion
from segdeploy.data.samples import MASK_VALUES_KEY, SEED_KEY, LabelledImage, labelled_images
from segdeploy.models import ArchSpec, create_model, get_spec
from segdeploy.models.registry import resolve_finetune
from segdeploy.train.checkpoint import read_checkpoint, save_checkpoint, save_weights, state_path
from segdeploy.train.config import TrainConfig, output_path, training_input_contract
from segdeploy.train.datasets import (
    TrainingData,
    build_training_data,
    compute_class_weights,
    weights_from_counts,
)
from segdeploy.train.distributed import SINGLE_PROCESS, DistributedContext, init_distributed
from segdeploy.train.inference import TorchPredictor
from segdeploy.train.losses import build_loss
from segdeploy.train.plan import (
    BUDGET_SLACK,
    PLATEAU_MIN_DELTA,
    PlanChoice,
    TrainingPlan,
    budget_epochs,
    fit_epochs,
    on_plateau,
    plateau_patience,
)
from segdeploy.train.progress import EpochRecord, TrainProgress
from segdeploy.train.resume import (
    RunState,
    check_output,
    read_resume,
    resume_paths,
    resume_run,
    trainer_state,
)
from segdeploy.train.setup import TrainingSetup

__all__ = ["EpochRecord", "TrainResult", "TrainingSetup", "check_config", "check_output", "train"]


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
    """Seed Python, NumPy and torch; returns a generator for the training loader's shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class WarmupCosine:
    """The LR factor of a step: linear warm-up, then a cosine to 0 at ``total_steps``.

    An object, not a closure: ``LambdaLR.state_dict`` saves a callable object's attributes, so
    the step count a budgeted run fixes after its first epoch (:meth:`set_total`) travels in
    the run's state file and ``--resume`` ends the schedule where the budget did.
    """

    def __init__(self, total_steps: int, warmup_fraction: float) -> None:
        self.warmup_fraction = warmup_fraction
        self.set_total(total_steps)

    def set_total(self, total_steps: int) -> None:
        """End the cosine at ``total_steps`` (warm-up: its ``warmup_fraction``)."""
        self.total_steps = total_steps
        self.warmup_steps = max(1, int(self.warmup_fraction * total_steps))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


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


def predicted_label(predictor: TorchPredictor, image: np.ndarray) -> np.ndarray | int:
    """``predict``'s answer as a label to score: the mask, or the predicted class index."""
    prediction = predictor.predict(image)
    if predictor.card.task == "classification":
        return int(np.argmax(prediction[1]))
    return prediction


def score_items(
    predictor: TorchPredictor,
    items: list[LabelledImage],
    dist: DistributedContext = SINGLE_PROCESS,
) -> TaskScore:
    """The task metric of ``predictor`` over labelled images, each at its own size.

    One confusion matrix over the whole set (as :func:`~segdeploy.core.metrics.score_predictions`
    builds it); in a run of several processes each scores its shard of ``items`` and the
    matrices are summed over the processes before the metric is computed.
    """
    card, shard = predictor.card, dist.shard(items)
    if card.task == "classification" and card.input.resize == "fixed":
        # Batched: every image has the contract's one size (see TorchPredictor.class_indices).
        labels = predictor.class_indices([item.pixels for item in shard])
        pairs = zip(labels, (item.label for item in shard), strict=True)
    else:
        pairs = ((predicted_label(predictor, item.pixels), item.label) for item in shard)
    matrix, images = dist.sum_counts(*confusion_of_pairs(pairs, card.num_classes, task=card.task))
    return score_confusion(matrix, card.task, images)


def check_config(config: TrainConfig, spec: ArchSpec) -> None:
    """Refuse what cannot train before anything is built (values left to the plan excepted)."""
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise SegdeployError("--device cuda was asked for but PyTorch sees no CUDA device")
    for flag, value in (("--epochs", config.epochs), ("--batch-size", config.batch_size)):
        if value is not None and value < 1:
            raise SegdeployError(f"{flag} must be at least 1, found {value}")
    if config.class_weights not in (None, "auto", "none"):
        raise SegdeployError(
            f"--class-weights must be 'auto' or 'none', found {config.class_weights!r}"
        )
    _finetune(config, spec)  # refuse a frozen random backbone before any data is read
    size = config.img_size
    if size is not None and (size < 1 or size % spec.size_multiple):
        raise SegdeployError(f"--img-size must be a multiple of {spec.size_multiple}, found {size}")


def planned_config(config: TrainConfig, plan: TrainingPlan) -> TrainConfig:
    """``config`` with every value it left open filled in from ``plan``."""
    return dataclasses.replace(
        config,
        img_size=int(plan.img_size.value),
        batch_size=int(plan.batch_size.value),
        epochs=int(plan.epochs.value),
        class_weights=str(plan.class_weights.value),
        loss=str(plan.loss.value),
    )


def _finetune(config: TrainConfig, spec: ArchSpec) -> str:
    """The fine-tuning policy this run applies (see :func:`resolve_finetune`)."""
    return resolve_finetune(spec, config.finetune, pretrained=config.pretrained is not None)


def _build_model(
    config: TrainConfig, spec: ArchSpec, num_classes: int, model_kwargs: dict[str, Any]
) -> nn.Module:
    model = create_model(config.arch, num_classes=num_classes, **model_kwargs)
    if config.pretrained is not None:
        if spec.load_pretrained is None:
            raise SegdeployError(f"'{config.arch}' does not take --pretrained weights")
        spec.load_pretrained(model, config.pretrained)
    if spec.finetune is not None:
        spec.finetune(model, _finetune(config, spec))
    return model.to(config.device)


def _build_criterion(
    config: TrainConfig, task: str, data: TrainingData, num_classes: int
) -> tuple[nn.Module, str]:
    """The loss and the name of the validation metric that picks the best epoch.

    ``auto`` class weights come from the labelled pixels the data checks counted (folders) or
    from up to 256 rendered masks (synthetic data).
    """
    if task != "segmentation":
        return nn.CrossEntropyLoss().to(config.device), "accuracy"
    weights = None
    if config.class_weights == "auto":
        counted = data.summary.train.per_class
        if counted is not None:
            weights = weights_from_counts(list(counted.values()), config.data)
        else:
            weights = compute_class_weights(data.train_set, num_classes, max_items=256)
    criterion = build_loss(config.loss, class_weights=weights, ignore_index=IGNORE_INDEX)
    return criterion.to(config.device), "mIoU"


def _build_optimizer(config: TrainConfig, model: nn.Module, steps_per_epoch: int, epochs: int):
    """Trainable parameters, AdamW and its warm-up + cosine schedule over ``epochs`` (a
    budgeted run: provisional, fixed after its first epoch by :func:`_fit_budget`)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(epochs * steps_per_epoch, config.warmup_fraction)
    )
    return trainable, optimizer, scheduler


def _validation_items(config: TrainConfig, card: ModelCard) -> list[LabelledImage]:
    """The validation images at their own size: the items ``evaluate`` reads for this split.

    Synthetic data: ``config.val_samples`` scenes rendered with ``seed + VALIDATION_SEED_OFFSET``;
    a folder: its ``val/`` folder, or the share held out with ``config.seed``.
    """
    count = config.val_samples if config.data == "synthetic" else None
    return labelled_images(card, config.data, "val", count, config.seed)


def _untrained_card(spec: ArchSpec, class_names, model_kwargs, size: int, mask_values) -> ModelCard:
    """The card before any epoch: the training size is known, the rest comes per best epoch."""
    return ModelCard(
        arch=spec.name,
        task=spec.task,
        class_names=class_names,
        model_kwargs=model_kwargs,
        size_multiple=spec.size_multiple,
        input=training_input_contract(spec.task, size),
        # labelled_images renders synthetic validation scenes at the card's training size and
        # maps mask values as the card says.
        training={"img_size": size, **_mask_values_record(mask_values)},
    )


def prepare_training(
    config: TrainConfig, dist: DistributedContext = SINGLE_PROCESS
) -> TrainingSetup:
    """Check ``config``, seed, then build data, model, loss, loaders and optimiser (for this
    process's part of a distributed run when ``dist`` says so).

    Raises:
        SegdeployError: anything in ``config`` that cannot train (unknown arch or variant,
            bad size, missing data or weights, CUDA asked for but absent).
    """
    spec = get_spec(config.arch)
    check_config(config, spec)
    generator = seed_everything(config.seed)
    data = build_training_data(config, spec.task, spec.train_size, spec.size_multiple)
    config = planned_config(config, data.plan)
    size = config.img_size
    train_set, class_names, data_description = data.train_set, data.class_names, data.description
    variant = spec.resolve_variant(config.variant)
    model_kwargs = spec.variant_kwargs(variant)
    card = _untrained_card(spec, class_names, model_kwargs, size, config.mask_values)
    val_items = _validation_items(config, card)
    model = dist.prepare_model(_build_model(config, spec, len(class_names), model_kwargs))
    criterion, metric_name = _build_criterion(config, spec.task, data, len(class_names))
    # Model and class weights come out the same on every rank; what follows draws per rank.
    dist.seed_rank(config.seed, generator)
    train_loader = _train_loader(config, train_set, generator, data.plan.loader_workers, dist)
    steps = len(train_loader)
    trainable, optimizer, scheduler = _build_optimizer(
        config, model, steps, _provisional_epochs(config, data.plan, len(train_set))
    )
    return TrainingSetup(
        config=config,
        spec=spec,
        size=size,
        variant=variant,
        out=output_path(config),
        card=card,
        data_description=f"{data_description}; validated on {len(val_items)} images at their "
        f"own size through the '{card.input.resize}' input contract",
        data_summary=data.summary,
        plan=data.plan,
        model=model,
        criterion=criterion,
        metric_name=metric_name,
        train_loader=train_loader,
        val_items=val_items,
        trainable=trainable,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_of=dist.loss_function(model, criterion, _training_loss),
        dist=dist,
    )


def _provisional_epochs(config: TrainConfig, plan: TrainingPlan, items: int) -> int:
    """The schedule's epochs before the first one is timed: ``config.epochs``, or in a budgeted
    run the fixed plan's count (its warm-up length is what the first epoch should see)."""
    if plan.budget_s is None:
        return config.epochs
    return int(fit_epochs(items, config.batch_size).value)


def _train_loader(
    config: TrainConfig, train_set, generator, workers: int, dist: DistributedContext
) -> DataLoader:
    """Shuffled batches of ``train_set`` (of this process's shard in a distributed run)."""
    sampler = dist.sampler(train_set, config.seed)
    count = len(train_set) if sampler is None else len(sampler)
    return DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=count > config.batch_size,
        generator=generator,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def train_one_epoch(setup: TrainingSetup, progress: TrainProgress) -> float:
    """One pass over the training loader; returns the mean training loss (over every process's
    steps in a distributed run)."""
    config, model = setup.config, setup.model
    model.train()
    freeze_frozen_batchnorm(model)
    running = 0.0
    for step, (images, targets) in enumerate(setup.train_loader, start=1):
        images, targets = images.to(config.device), targets.to(config.device)
        loss = setup.loss_of(images, targets)
        setup.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(setup.trainable, config.grad_clip)
        setup.optimizer.step()
        setup.scheduler.step()
        running += loss.item()
        progress.step_done(step, running / step)
    return setup.dist.mean(running / len(setup.train_loader))


def validation_details(score: TaskScore) -> dict[str, Any]:
    """The card's ``training["validation"]`` entry of a score (``None`` where undefined).

    Segmentation: ``miou``, ``per_class_iou``, ``pixel_accuracy``, ``fw_iou``; classification:
    ``accuracy`` and ``per_class_recall``; both: ``images``, how many were scored.
    """
    data = score.to_dict()
    if score.metric_name == "mIoU":
        found = {"miou": data["metric"], "per_class_iou": data["per_class"], **data["details"]}
    else:
        found = {"accuracy": data["metric"], "per_class_recall": data["per_class"]}
    return {**found, "images": score.images}


def validate(setup: TrainingSetup) -> tuple[float, dict[str, Any]]:
    """The validation metric (mIoU or accuracy) and its details, over the whole validation set.

    Each image goes through the card's input contract at its own size, as ``predict`` serves it.
    In a distributed run every process validates rank 0's model on its shard of the images.
    """
    setup.dist.broadcast_buffers(setup.model)
    predictor = TorchPredictor(setup.model, setup.card, setup.config.device)
    score = score_items(predictor, setup.val_items, setup.dist)
    return score.metric, validation_details(score)


def _mask_values_record(mask_values) -> dict[str, list[int]]:
    """The card entry that tells every later reader of the data how mask values map to classes."""
    return {MASK_VALUES_KEY: list(mask_values)} if mask_values else {}


def budget_record(setup: TrainingSetup, run: RunState) -> dict[str, Any]:
    """The card's ``training["budget"]`` entry of a budgeted run: the budget, the epochs it
    planned and ran, the optimiser steps run, the seconds they took and why it stopped."""
    steps = len(setup.train_loader)
    return {
        "seconds": setup.plan.budget_s,
        "epochs_planned": run.planned_epochs,
        "epochs_run": run.epoch,
        "steps_run": run.epoch * steps,
        "epoch_seconds": round(sum(record.seconds for record in run.history), 3),
        "stopped": run.stopped or "schedule finished",
    }


def training_record(
    setup: TrainingSetup, best: EpochRecord, run: RunState | None = None
) -> dict[str, Any]:
    """The card's ``training`` entry when ``best`` is the best epoch so far (of ``run``, whose
    budget it records in a budgeted run)."""
    config = setup.config
    budgeted = run is not None and setup.plan.budget_s is not None
    return {
        **({"budget": budget_record(setup, run)} if budgeted else {}),
        "epochs": run.planned_epochs if run and run.planned_epochs else config.epochs,
        "best_epoch": best.epoch,
        "metric": setup.metric_name,
        "best_metric": round(best.metric, 6),
        "validation": best.details,
        "data": setup.data_description,
        "data_summary": setup.data_summary.to_dict(),
        "plan": setup.plan.to_dict(),
        "img_size": setup.size,
        **_mask_values_record(config.mask_values),
        "loss": config.loss if setup.spec.task == "segmentation" else "ce",
        SEED_KEY: config.seed,
        "variant": setup.variant,
        **({"finetune": _finetune(config, setup.spec)} if setup.spec.finetune else {}),
        **({"pretrained": Path(config.pretrained).name} if config.pretrained else {}),
        **setup.dist.card_entry(setup.model, config.batch_size),
    }


def _resumed(
    setup: TrainingSetup, weights: dict[str, torch.Tensor], trainer: dict[str, Any]
) -> RunState:
    """The saved run put back into ``setup`` (:func:`~segdeploy.train.resume.resume_run`), its
    card given the best epoch's record, and that epoch's weights in ``setup.out``."""
    run = resume_run(setup, weights, trainer)
    if run.best_epoch:
        best = run.history[run.best_epoch - 1]
        run.card = setup.card.replace(training=training_record(setup, best))
        # The output holds the best epoch even if no later epoch beats it (resumed into another
        # file), with this run's card (a larger --epochs).
        if setup.dist.is_main:
            best_weights = read_checkpoint(resume_paths(setup.config.resume)[0])[1]
            save_weights(best_weights, run.card, setup.out)
    return run


def _final_budget_card(setup: TrainingSetup, run: RunState, progress: TrainProgress) -> None:
    """The best file's card with the whole run's budget record (epochs run, why it stopped):
    the best epoch's weights are written again under it."""
    run.card = run.card.replace(
        training=training_record(setup, run.history[run.best_epoch - 1], run)
    )
    if run.stopped:
        progress.note(f"stopped after epoch {run.epoch}: {run.stopped}")
    if setup.dist.is_main:
        save_weights(read_checkpoint(setup.out)[1], run.card, setup.out)


def _run_epochs(setup: TrainingSetup, run: RunState, progress: TrainProgress, clock: float) -> None:
    """Train and validate from ``run.epoch + 1`` to the run's epoch count, saving after each
    (rank 0 alone in a distributed run). A budgeted run (``plan.budget_s``) fixes that count
    after its first epoch (:func:`_fit_budget`) and stops early on a plateau or when the next
    epoch would end past the budget's slack; ``clock`` is when the run started."""
    config, steps, main = setup.config, len(setup.train_loader), setup.dist.is_main
    epoch = run.epoch + 1
    while epoch <= (run.planned_epochs or config.epochs):
        if (stop := _budget_stop(setup, run, clock)) is not None:
            run.stopped = stop
            break
        epoch_started = time.perf_counter()
        setup.dist.set_epoch(setup.train_loader.sampler, epoch)
        progress.epoch_started(epoch, run.planned_epochs or config.epochs, steps)
        train_loss = train_one_epoch(setup, progress)
        metric, details = validate(setup)
        seconds = time.perf_counter() - epoch_started
        record = EpochRecord(epoch, train_loss, metric, seconds, details)
        run.history.append(record)
        run.epoch = epoch
        if setup.plan.budget_s is not None and not run.resumed_epochs and epoch <= TIMED_EPOCHS:
            fastest = min(record.seconds for record in run.history)
            _fit_budget(setup, run, time.perf_counter() - clock, fastest, progress)
        improved = metric > run.best_metric
        progress.epoch_done(record, improved, setup.metric_name)
        if improved:
            run.best_metric, run.best_epoch = metric, epoch
        run.card = run.card.replace(
            training=training_record(setup, run.history[run.best_epoch - 1], run)
        )
        if improved and main:
            save_checkpoint(setup.model, run.card, setup.out)
        # After the best file: a stop between the two leaves a state one epoch behind, whose
        # resumed epoch rewrites the same best file (never a state ahead of the best file).
        trainer = trainer_state(setup, run)
        if main:
            save_checkpoint(setup.model, run.card, state_path(setup.out), trainer)
        epoch += 1


def _fit_budget(
    setup: TrainingSetup, run: RunState, elapsed: float, epoch_s: float, progress: TrainProgress
) -> None:
    """Fix a budgeted run's epoch count from its fastest epoch so far, end the LR schedule
    there, and record the choice in the plan (printed, and stored in the card).

    Called after each of the first :data:`TIMED_EPOCHS` epochs: the first one pays for
    one-off work (allocator and kernel warm-up, first decoding), 17x a later epoch's time for
    the tiny U-Net on the texture set, and alone would leave most of the budget unused.
    """
    budget = setup.plan.budget_s
    run.planned_epochs = budget_epochs(budget, elapsed, epoch_s, run.epoch)
    setup.scheduler.lr_lambdas[0].set_total(run.planned_epochs * len(setup.train_loader))
    reason = (
        f"{budget:g} s budget: {epoch_s:.1f} s an epoch with validation (fastest of the "
        f"first {run.epoch}), {elapsed:.1f} s since the start; the LR schedule ends with the "
        "last epoch; stops on a plateau of "
        f"{plateau_patience(run.planned_epochs)} epochs"
    )
    setup.plan = dataclasses.replace(setup.plan, epochs=PlanChoice(run.planned_epochs, reason))
    progress.note(f"epochs: {run.planned_epochs} ({reason})")


#: A budgeted run refits its epoch count after each of its first this many epochs.
TIMED_EPOCHS = 2


def _budget_stop(setup: TrainingSetup, run: RunState, clock: float) -> str | None:
    """Why a budgeted run stops before its next epoch (``None``: it goes on)."""
    budget = setup.plan.budget_s
    if budget is None or not run.history:
        return None
    metrics = [record.metric for record in run.history]
    if on_plateau(metrics, plateau_patience(run.planned_epochs or setup.config.epochs)):
        patience = plateau_patience(run.planned_epochs or setup.config.epochs)
        return f"plateau: the last {patience} epochs gained under {PLATEAU_MIN_DELTA:g}"
    # The epochs this process ran (a resumed run's earlier ones ran in another).
    own = run.history[run.resumed_epochs :]
    if own:
        expected_end = time.perf_counter() - clock + sum(r.seconds for r in own) / len(own)
        if expected_end > budget * (1 + BUDGET_SLACK):
            return f"budget: the next epoch would end at {expected_end:.0f} s of {budget:g} s"
    return None


def train(config: TrainConfig, progress: TrainProgress | None = None) -> TrainResult:
    """Train ``config.arch`` and write the best checkpoint and the run's state file; see
    :class:`TrainConfig` and the module's notes on ``force`` and ``resume``.

    Args:
        config: what to train, on what, for how long.
        progress: told about every epoch and step; ``None`` trains silently
            (``RichTrainProgress(console)`` is the CLI's display).

    Started by torchrun with several processes, each trains its share with
    DistributedDataParallel and rank 0 alone reports to ``progress`` and writes the files (see
    :mod:`segdeploy.train.distributed`).

    Raises:
        SegdeployError: see :func:`prepare_training`, and :mod:`segdeploy.train.resume`'s
            :func:`~segdeploy.train.resume.check_output`, ``read_resume`` and ``resume_run``, and
            :func:`~segdeploy.train.distributed.init_distributed`.
        KeyboardInterrupt: Ctrl-C; the files of the last finished epoch stay whole.
    """
    dist, device = init_distributed(config.device)
    try:
        config = dataclasses.replace(config, device=device)
        return _train(config, progress if dist.is_main else None, dist)
    finally:
        dist.finish()


def _train(
    config: TrainConfig, progress: TrainProgress | None, dist: DistributedContext
) -> TrainResult:
    """:func:`train` in this process (one of several when ``dist`` says so)."""
    clock = time.perf_counter()  # a budget counts from here: data checks and setup included
    progress = progress or TrainProgress()
    check_output(config)
    resumed = read_resume(config) if config.resume is not None else None
    setup = prepare_training(config, dist)
    run = _resumed(setup, *resumed) if resumed else RunState(setup.card)
    started = time.perf_counter()
    progress.data_ready([*setup.data_summary.lines(), *setup.plan.lines()])
    progress.run_started(setup.config.epochs, len(setup.train_loader))
    try:
        _run_epochs(setup, run, progress, clock)
        if setup.plan.budget_s is not None and run.best_epoch:
            _final_budget_card(setup, run, progress)
    finally:
        progress.run_finished()
    dist.barrier()
    return TrainResult(
        checkpoint=setup.out,
        card=run.card,
        history=run.history,
        metric_name=setup.metric_name,
        best_metric=run.best_metric,
        best_epoch=run.best_epoch,
        seconds=time.perf_counter() - started,
    )
