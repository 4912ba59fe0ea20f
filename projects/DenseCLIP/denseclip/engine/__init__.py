"""Training engine: recipe optimizer/schedule, CPU-capable launcher, the ``Trainer`` and the ``setup``
used by ``train_net.py``; config building (:mod:`denseclip.config_building`) and checkpoints
(:mod:`denseclip.checkpoint`), which inference shares, re-exported. Inference (predictor, deploy, web
demo) imports nothing from this package."""
from ..checkpoint import AtomicDetectionCheckpointer, IncompatibleCheckpointError, atomic_write
from ..config_building import ConfigError, build_config, check_dataset_names, merge_config_file, merge_overrides, resolve_step_fractions
from .launch import LaunchError, launch
from .optimizer import (
    NO_DECAY_NAME_KEYS,
    add_full_model_gradient_clipping,
    build_lr_scheduler,
    build_optimizer,
    get_denseclip_param_groups,
    model_parameter_groups,
)
from .run_output import redirect_evaluation_output
from .run_setup import cpu_processes_requested, default_argument_parser, setup
from .trainer import (
    AutocastTrainer,
    GradScalerOverflowLogger,
    LRScheduler,
    Trainer,
)

__all__ = [
    "AtomicDetectionCheckpointer",
    "AutocastTrainer",
    "ConfigError",
    "GradScalerOverflowLogger",
    "IncompatibleCheckpointError",
    "LRScheduler",
    "LaunchError",
    "NO_DECAY_NAME_KEYS",
    "Trainer",
    "add_full_model_gradient_clipping",
    "atomic_write",
    "build_config",
    "build_lr_scheduler",
    "build_optimizer",
    "check_dataset_names",
    "cpu_processes_requested",
    "default_argument_parser",
    "get_denseclip_param_groups",
    "launch",
    "merge_config_file",
    "redirect_evaluation_output",
    "merge_overrides",
    "model_parameter_groups",
    "resolve_step_fractions",
    "setup",
]
