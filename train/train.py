"""Leffa trainer: the same script on CPU, one GPU, several GPUs or nodes (accelerate), plus checkpoint export.

    accelerate launch train/train.py --config train/configs/vitonhd-512.yaml [--override key=value ...]
    python train/train.py --config train/configs/synthetic/tiny.yaml --resume latest
    python train/train.py export --checkpoint runs/x/checkpoints/step-00001000 --output model.safetensors

The objective is :func:`leffa.core.training.training_losses`; this script adds data loading, AdamW, the LR
schedule, gradient accumulation, mixed precision, EMA (diffusers' ``EMAModel``), resumable checkpoints,
logging and export. It also trains the synthetic benchmark's stages (``data.type: synthetic``).
Randomness is reproducible: the data order is a seeded permutation per epoch (process r of n takes every
n-th item), and every micro-batch draws its noise, timesteps, reference dropout and VAE samples from a
generator seeded by (seed, micro-batch index) for the whole global micro-batch, each process keeping its
samples' draws. So a resumed run continues exactly as an uninterrupted one, and n processes with batch b
train as one process with batch n × b (up to the order of floating-point sums).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: import `leffa` and `train` from the repository root, not from this folder (whose
    # train.py would otherwise shadow the `train` package).
    _REPO = Path(__file__).resolve().parents[1]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _REPO / "train"]
    sys.path.insert(0, str(_REPO))

import argparse
import json
import logging
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import yaml
from accelerate import Accelerator, DistributedDataParallelKwargs, DistributedType
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, is_tensorboard_available, is_wandb_available, set_seed
from diffusers.training_utils import EMAModel
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from leffa.core.flow import FlowSupervisionConfig, LeffaLossConfig
from leffa.core.model import DTYPES, LeffaModel
from leffa.core.pipeline import LeffaPipeline
from leffa.core.recording import LeffaRegisters, select_layers
from leffa.core.serialization import write_config_files
from leffa.core.training import TrainingLosses, training_losses
from leffa.core.transforms import tensor_to_uint8
from train.batches import BATCH_KEYS, generate_batch, stack_items
from train.config import ConfigError, DataConfig, TrainConfig, config_to_dict, flat_config, load_config
from train.checkpoints import (
    CHECKPOINT_PREFIX,
    EMA_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    export_checkpoint,
    find_checkpoint,
    list_checkpoints,
)
from train.data_order import EpochSampler, batch_stream, derived_seed
from train.datasets import Augmentation, DeepFashionPoseDataset, DressCodeDataset, VitonHDDataset
from train.model_setup import build_model, configure_trainable, model_configs, trainable_parameters
from train.optimization import make_lr_scheduler, make_optimizer
from train.synthetic.data import SyntheticTryOnDataset
from train.synthetic.pose import SyntheticPoseDataset
from train.trackers import JSONL_FILE, JsonLinesTracker

logger = get_logger(__name__)

class LeffaTrainingModule(nn.Module):
    """What accelerate wraps (DDP, DeepSpeed): the model plus optional registers; ``forward`` is the loss.

    DDP only synchronises gradients of work done inside ``forward``, so the loss must be computed there.
    """

    def __init__(
        self,
        model: LeffaModel,
        leffa: LeffaLossConfig | None,
        reference_dropout: float,
        registers: LeffaRegisters | None = None,
        flow_supervision: FlowSupervisionConfig | None = None,
        diffusion_weight: float = 1.0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        super().__init__()
        #: (process index, process count): which samples of the global micro-batch's draws are this process's.
        self.shard = shard
        self.model = model
        self.registers = registers
        self.leffa = leffa
        self.reference_dropout = reference_dropout
        self.flow_supervision = flow_supervision
        self.diffusion_weight = diffusion_weight
        self.noise_scheduler = model.make_scheduler()

    def train(self, mode: bool = True) -> LeffaTrainingModule:
        super().train(mode)
        self.model.vae.eval()
        return self

    def forward(self, batch: Mapping[str, Tensor], generator: torch.Generator) -> TrainingLosses:
        return training_losses(
            self.model,
            batch,
            self.noise_scheduler,
            generator=generator,
            leffa=self.leffa,
            reference_dropout=self.reference_dropout,
            registers=self.registers,
            flow_supervision=self.flow_supervision,
            diffusion_weight=self.diffusion_weight,
            shard=self.shard,
        )


# ------------------------------------------------------------------------------------------- data


def build_dataset(
    config: DataConfig, split: str, *, seed: int = 0, augment: bool = True, with_flow: bool = False
) -> Dataset:
    """The configured dataset (paired mode) for ``split``; augmentation only on request and when set.
    ``with_flow``: synthetic try-on items keep the true flow (pose-transfer items always have it)."""
    size = tuple(config.size)
    augmentation = None
    if augment and config.augmentation.active:
        augmentation = Augmentation(**config.augmentation.model_dump(), seed=seed)
    if config.type == "vitonhd":
        return VitonHDDataset(config.root, split, "paired", size, augmentation)
    if config.type == "dresscode":
        return DressCodeDataset(config.root, config.category, split, "paired", size, augmentation)
    if config.type == "deepfashion":
        return DeepFashionPoseDataset(config.root, split, size, augmentation)
    seed = config.synthetic_seed or 0
    if config.synthetic_task == "pose_transfer":
        return SyntheticPoseDataset(split, size, config.length, seed, cache_dir=config.cache_dir)
    return SyntheticTryOnDataset(split, size, config.length, seed, cache_dir=config.cache_dir, with_flow=with_flow)


def first_items(dataset: Dataset, count: int) -> dict[str, Tensor]:
    """The first ``count`` items of ``dataset`` as one batch of the model inputs."""
    if len(dataset) < count:
        raise ValueError(
            f"logging.sample_count is {count} but the sample dataset has only {len(dataset)} items"
        )
    return stack_items([dataset[index] for index in range(count)])


def sample_grid(batch: Mapping[str, Tensor], generated: np.ndarray) -> np.ndarray:
    """One row per sample: reference | masked person | densepose | generated | target (uint8 HWC)."""
    masked = batch["image"] * (1 - batch["mask"])
    columns = [tensor_to_uint8(t) for t in (batch["reference"], masked, batch["densepose"])]
    columns += [generated, tensor_to_uint8(batch["image"])]
    return np.concatenate([np.concatenate(row, axis=1) for row in zip(*columns, strict=True)], axis=0)


# ------------------------------------------------------------------------------------------ trainer


def make_accelerator(config: TrainConfig) -> Accelerator:
    log_with = config.logging.log_with
    if log_with == "tensorboard" and not is_tensorboard_available():
        raise ImportError("logging.log_with is tensorboard but it is not installed: pip install tensorboard")
    if log_with == "wandb" and not is_wandb_available():
        raise ImportError(
            "logging.log_with is wandb but it is not installed: pip install wandb (or use tensorboard)"
        )
    output = Path(config.output_dir)
    trackers = {
        "none": None,
        "jsonl": [JsonLinesTracker(output / "logs" / config.logging.project / JSONL_FILE)],
    }
    return Accelerator(
        mixed_precision=config.train.mixed_precision,
        gradient_accumulation_steps=config.train.gradient_accumulation_steps,
        log_with=trackers.get(log_with, log_with),
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
        step_scheduler_with_optimizer=False,
        # Parts of both UNets never get gradients (attn2, the reference UNet's output layers).
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


class Trainer:
    """Builds everything from a :class:`TrainConfig`; :meth:`fit` trains to ``train.max_steps``."""

    def __init__(self, config: TrainConfig, accelerator: Accelerator | None = None) -> None:
        self.config = config
        self.accelerator = accelerator or make_accelerator(config)
        self.output_dir = Path(config.output_dir)
        set_seed(config.seed)
        model = build_model(config.model)
        configure_trainable(model, config)
        leffa = config.leffa.loss_config() if config.leffa.enabled else None
        registers = None
        if leffa is not None and config.leffa.registers:
            layers = select_layers(model, tuple(config.data.size), leffa.theta_resolution)
            registers = LeffaRegisters(model, layers, config.leffa.registers)
        supervision = config.flow_supervision.loss_config() if config.flow_supervision.enabled else None
        module = LeffaTrainingModule(
            model, leffa, config.train.reference_dropout, registers, supervision, config.train.diffusion_weight,
            shard=(self.accelerator.process_index, self.accelerator.num_processes),
        )
        garment_mask = config.leffa.enabled and config.leffa.mask == "garment"
        #: The true flow travels with the batches only for the terms that read it.
        self.batch_keys = (*BATCH_KEYS, "flow", "flow_valid") if supervision or garment_mask else BATCH_KEYS
        module.to(self.accelerator.device)
        self.ema = self._new_ema(model) if config.train.ema.enabled else None
        optimizer = make_optimizer((p for p in module.parameters() if p.requires_grad), config.optim)
        lr_scheduler = make_lr_scheduler(optimizer, config.optim, config.train.max_steps)
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            plugin = self.accelerator.state.deepspeed_plugin
            if plugin.is_auto("train_micro_batch_size_per_gpu"):
                plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.train.batch_size
        self.module, self.optimizer, self.lr_scheduler = self.accelerator.prepare(
            module, optimizer, lr_scheduler
        )

        with_flow = "flow" in self.batch_keys
        self.dataset = build_dataset(config.data, "train", seed=config.seed, with_flow=with_flow)
        self.sampler = EpochSampler(
            len(self.dataset),
            seed=config.seed,
            batch_size=config.train.batch_size,
            rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes,
        )
        self.loader = DataLoader(
            self.dataset,
            batch_size=config.train.batch_size,
            sampler=self.sampler,
            num_workers=config.data.num_workers,
            drop_last=True,
            pin_memory=self.accelerator.device.type == "cuda",
        )
        self.step = 0
        self.micro_step = 0
        self._batches: Iterator[dict] | None = None
        self._sample_batch: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------------------------ access
    @property
    def model(self) -> LeffaModel:
        """The (unwrapped) model being trained."""
        return self.accelerator.unwrap_model(self.module).model

    def _new_ema(self, model: LeffaModel) -> EMAModel:
        """An EMA of the trainable parameters starting at their current values."""
        return EMAModel(trainable_parameters(model).values(), decay=self.config.train.ema.decay)

    def ema_weights(self) -> dict[str, Tensor]:
        """Released-format names -> the EMA's averaged weights (the EMA must be enabled)."""
        return dict(zip(trainable_parameters(self.model), self.ema.shadow_params, strict=True))

    @contextmanager
    def _ema_applied(self) -> Iterator[None]:
        """The EMA weights in the model for the duration (e.g. for sample images), then the trained ones."""
        parameters = list(trainable_parameters(self.model).values())
        self.ema.store(parameters)
        self.ema.copy_to(parameters)
        try:
            yield
        finally:
            self.ema.restore(parameters)

    def _generator(self) -> torch.Generator:
        """The global micro-batch's generator, the same on every process (``training_losses`` takes this
        process's samples of its draws); keyed (seed, 0, micro-batch) as one-process runs always were."""
        seed = derived_seed(self.config.seed, 0, self.micro_step)
        return torch.Generator(device=self.accelerator.device).manual_seed(seed)

    def _next_batch(self) -> dict[str, Tensor]:
        if self._batches is None:
            self._batches = batch_stream(self.loader, self.sampler, self.micro_step)
        batch = next(self._batches)
        return {key: batch[key].to(self.accelerator.device, non_blocking=True) for key in self.batch_keys}

    # -------------------------------------------------------------------------------------- steps
    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches; returns the mean losses
        of this process and the learning rate used."""
        accelerator, optim = self.accelerator, self.config.optim
        self.module.train()
        totals: dict[str, float] = {}
        learning_rate = self.lr_scheduler.get_last_lr()[0]
        micro_batches = self.config.train.gradient_accumulation_steps
        for _ in range(micro_batches):
            batch = self._next_batch()
            with accelerator.accumulate(self.module):
                losses = self.module(batch, self._generator())
                accelerator.backward(losses.loss)
                if accelerator.sync_gradients:
                    if optim.max_grad_norm is not None:
                        accelerator.clip_grad_norm_(self.module.parameters(), optim.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
            self.micro_step += 1
            for key, value in losses.log_values().items():
                totals[key] = totals.get(key, 0.0) + value / micro_batches
        self.step += 1
        if self.ema is not None:
            self.ema.step(trainable_parameters(self.model).values())
        return {**totals, "lr": learning_rate}

    def _mean_over_processes(self, values: dict[str, float]) -> dict[str, float]:
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], device=self.accelerator.device, dtype=torch.float64)
        reduced = self.accelerator.reduce(tensor, reduction="mean")
        return dict(zip(keys, reduced.tolist(), strict=True))

    def fit(self) -> Path:
        """Train to ``train.max_steps``, checkpointing and logging on the way; returns the exported model."""
        config, accelerator = self.config, self.accelerator
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(
                yaml.safe_dump(config_to_dict(config), sort_keys=False)
            )
        if config.logging.log_with != "none":
            accelerator.init_trackers(config.logging.project, config=flat_config(config))
        progress = tqdm(
            total=config.train.max_steps,
            initial=self.step,
            desc="train",
            dynamic_ncols=True,
            disable=not (accelerator.is_local_main_process and config.logging.progress_bar),
        )
        checkpoint = None
        while self.step < config.train.max_steps:
            values = self.train_step()
            progress.update(1)
            progress.set_postfix(loss=f"{values['loss/total']:.4f}", lr=f"{values['lr']:.2e}")
            last = self.step == config.train.max_steps
            if self.step % config.logging.log_every == 0 or last:
                accelerator.log(self._mean_over_processes(values), step=self.step)
            if config.logging.sample_every and (self.step % config.logging.sample_every == 0 or last):
                self.log_samples()
            if self.step % config.checkpoint.every == 0 or last:
                checkpoint = self.save_checkpoint()
        progress.close()
        checkpoint = checkpoint or find_checkpoint(self.output_dir)
        exported = self.output_dir / WEIGHTS_FILE
        if accelerator.is_main_process:
            export_checkpoint(checkpoint, exported)
            configs = model_configs(config.model)
            if configs.name == "custom":  # not a shipped base: the configs travel with the weights
                write_config_files(configs, self.output_dir)
            if self.ema is not None:
                export_checkpoint(checkpoint, self.output_dir / "model-ema.safetensors", ema=True)
            logger.info(f"exported {exported}")
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return exported

    # ------------------------------------------------------------------------------------ samples
    @torch.no_grad()
    def log_samples(self) -> Path | None:
        """Generate the fixed sample batch (main process), save a PNG grid and log it to the trackers."""
        accelerator, logging_config = self.accelerator, self.config.logging
        path = None
        if accelerator.is_main_process:
            if self._sample_batch is None:
                dataset = build_dataset(self.config.data, logging_config.sample_split, augment=False)
                self._sample_batch = first_items(dataset, logging_config.sample_count)
            batch = self._sample_batch
            model = self.model
            swapped = self._ema_applied() if self.ema is not None else nullcontext()
            with swapped, accelerator.autocast():
                generated = generate_batch(
                    LeffaPipeline(model, uncond_cache_bytes=0),
                    batch,
                    num_inference_steps=logging_config.sample_steps,
                    guidance_scale=logging_config.sample_guidance,
                    generator=torch.Generator().manual_seed(self.config.seed),
                    output_type="np",
                ).images
            grid = sample_grid(batch, generated)
            path = self.output_dir / "samples" / f"step-{self.step:08d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(grid).save(path)
            for tracker in accelerator.trackers:
                if tracker.name == "tensorboard":
                    tracker.log_images({"samples": grid[None]}, step=self.step, dataformats="NHWC")
                elif tracker.name == "wandb":
                    tracker.log_images({"samples": [grid]}, step=self.step)
        accelerator.wait_for_everyone()
        return path

    # -------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """Save a resumable checkpoint; keeps the newest ``checkpoint.keep``."""
        accelerator = self.accelerator
        directory = self.output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{self.step:08d}"
        accelerator.save_state(str(directory))
        deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
        weights = accelerator.get_state_dict(self.module) if deepspeed else None
        if accelerator.is_main_process:
            if weights is not None:  # DeepSpeed saves its own format; export reads this file
                save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / WEIGHTS_FILE))
            if self.ema is not None:
                weights = {name: t.contiguous() for name, t in self.ema_weights().items()}
                save_file(weights, str(directory / EMA_FILE))
            state = {
                "step": self.step,
                "samples_seen": self.micro_step * self.config.train.batch_size * accelerator.num_processes,
                "ema_updates": self.ema.optimization_step if self.ema is not None else 0,
            }
            (directory / STATE_FILE).write_text(
                json.dumps(state, indent=2) + "\n"
            )  # written last: marks complete
            keep = self.config.checkpoint.keep
            if keep is not None:
                for old in list_checkpoints(self.output_dir)[:-keep]:
                    shutil.rmtree(old)
        accelerator.wait_for_everyone()
        return directory

    def _load_ema(self, shadow: Mapping[str, Tensor], updates: int) -> None:
        names = list(trainable_parameters(self.model))
        if set(shadow) != set(names):
            raise ValueError("EMA weights in the checkpoint do not match the trainable parameters of this config")
        self.ema.load_state_dict({"shadow_params": [shadow[name] for name in names], "optimization_step": updates})

    def resume(self, checkpoint: str | Path) -> Path | None:
        """Continue from a checkpoint directory, or ``"latest"`` of this run (none yet: start afresh)."""
        if str(checkpoint) == "latest":
            found = list_checkpoints(self.output_dir)
            if not found:
                logger.info(f"no checkpoint under {self.output_dir / 'checkpoints'}; starting from scratch")
                return None
            directory = found[-1]
        else:
            directory = find_checkpoint(checkpoint)
        self.accelerator.load_state(str(directory))
        # Restored micro-step counter of `accelerator.accumulate`: restart it so every optimizer step
        # again spans exactly gradient_accumulation_steps micro-batches even if that setting changed.
        self.accelerator.step = 0
        state = json.loads((directory / STATE_FILE).read_text())
        per_micro_step = self.config.train.batch_size * self.accelerator.num_processes
        if state["samples_seen"] % per_micro_step:
            logger.warning(
                "batch size or process count changed since the checkpoint; data order is approximate"
            )
        self.step = state["step"]
        self.micro_step = state["samples_seen"] // per_micro_step
        self._batches = None
        if self.ema is not None:
            ema_path = directory / EMA_FILE
            if ema_path.is_file():
                # Read on the CPU: safetensors rejects device names such as "cpu:0" (multi-process CPU runs).
                shadow = {name: t.to(self.accelerator.device) for name, t in load_file(str(ema_path)).items()}
                self._load_ema(shadow, state["ema_updates"])
            else:
                logger.warning(f"{directory} has no EMA weights; the EMA restarts from the current weights")
                self.ema = self._new_ema(self.model)
        logger.info(f"resumed from {directory} at step {self.step}")
        return directory


# ---------------------------------------------------------------------------------------------- CLI


def build_train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train/train.py",
        description="Train a Leffa model (subcommand 'export' writes a checkpoint in the released format).",
    )
    parser.add_argument("--config", required=True, help="YAML training config (see train/configs/)")
    parser.add_argument(
        "--override",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="replace config values, e.g. optim.learning_rate=1e-4 train.max_steps=100",
    )
    parser.add_argument("--resume", help="'latest' (of this run's output_dir) or a checkpoint directory")
    return parser


def build_export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train/train.py export",
        description="Export a training checkpoint as a released-format .safetensors or .pth file.",
    )
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint directory, or a run directory (latest)"
    )
    parser.add_argument("--output", required=True, help="output file: .safetensors or .pth")
    parser.add_argument("--ema", action="store_true", help="export the EMA weights")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="store float16 tensors")
    precision.add_argument("--bf16", action="store_true", help="store bfloat16 tensors")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if argv[:1] == ["export"]:
        parser = build_export_parser()
        args = parser.parse_args(argv[1:])
        dtype = DTYPES["fp16"] if args.fp16 else DTYPES["bf16"] if args.bf16 else None
        try:
            path = export_checkpoint(args.checkpoint, args.output, ema=args.ema, dtype=dtype)
        except (FileNotFoundError, ValueError) as error:
            parser.exit(2, f"error: {error}\n")
        logging.getLogger(__name__).info(f"wrote {path}")
        return 0
    parser = build_train_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.override)
        # Building the trainer reads the data and the init checkpoint: a missing folder or file, or weights
        # that do not fit, are the user's setup as much as the config is, and get the same one-line answer.
        trainer = Trainer(config)
        if args.resume:
            trainer.resume(args.resume)
    except (OSError, ValueError, ConfigError) as error:
        parser.exit(2, f"error: {error}\n")
    trainer.fit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
