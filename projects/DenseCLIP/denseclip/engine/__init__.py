"""Training engine: recipe optimizer/schedule, crash-safe checkpoints, CPU-capable launcher,
the ``Trainer`` and the config ``setup`` used by ``train_net.py``."""
from .checkpoint import AtomicDetectionCheckpointer, IncompatibleCheckpointError, atomic_write
from .launch import launch
from .optimizer import (
    IMAGE_ENCODER_PREFIXES,
    LEARNABLE_PROMPT_KEY,
    NO_DECAY_NAME_KEYS,
    TEXT_ENCODER_KEY,
    add_full_model_gradient_clipping,
    build_lr_scheduler,
    build_optimizer,
    get_denseclip_param_groups,
    resolve_step_fractions,
)
from .trainer import (
    AutocastTrainer,
    ConfigError,
    GradScalerOverflowLogger,
    Trainer,
    default_argument_parser,
    merge_config_file,
    merge_overrides,
    register_dataset_specs,
    setup,
)

__all__ = [
    "AtomicDetectionCheckpointer",
    "AutocastTrainer",
    "ConfigError",
    "GradScalerOverflowLogger",
    "IMAGE_ENCODER_PREFIXES",
    "IncompatibleCheckpointError",
    "LEARNABLE_PROMPT_KEY",
    "NO_DECAY_NAME_KEYS",
    "TEXT_ENCODER_KEY",
    "Trainer",
    "add_full_model_gradient_clipping",
    "atomic_write",
    "build_lr_scheduler",
    "build_optimizer",
    "default_argument_parser",
    "get_denseclip_param_groups",
    "launch",
    "merge_config_file",
    "merge_overrides",
    "register_dataset_specs",
    "resolve_step_fractions",
    "setup",
]
