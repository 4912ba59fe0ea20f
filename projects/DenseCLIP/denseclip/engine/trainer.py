"""The ``Trainer`` of ``train_net.py`` (its config ``setup`` and parser: :mod:`.run_setup`).

``Trainer`` is Detectron2's ``DefaultTrainer`` with the DenseCLIP recipe (optimizer, schedule),
crash-safe checkpoints, COCO evaluation without the C++ extension, CPU multi-process DDP, and
visible AMP overflow skips.
"""
from __future__ import annotations

import logging
import os
import time
import weakref
from collections import Counter, OrderedDict
from typing import Any, Dict, Iterable, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, HookBase, SimpleTrainer, create_ddp_model, hooks
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import DatasetEvaluator, SemSegEvaluator
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor, build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..backbone.norm import CPUSyncBatchNorm, sync_batchnorm_to_cpu
from ..checkpoint import AtomicDetectionCheckpointer
from ..config_building import ConfigError
from ..data import RobustDatasetMapper, SemSegDatasetMapper
from ..evaluation import build_coco_evaluator, evaluation_model
from .optimizer import build_lr_scheduler, build_optimizer, model_parameter_groups

__all__ = [
    "AutocastTrainer",
    "GradScalerOverflowLogger",
    "LRScheduler",
    "Trainer",
    "is_semantic_segmentation",
]

logger = logging.getLogger(__name__)

def is_semantic_segmentation(cfg: CfgNode) -> bool:
    """Whether MODEL.META_ARCHITECTURE is a semantic segmentor: Detectron2's ``SemanticSegmentor``
    or a subclass (its contract: "image" and "sem_seg" in, {"sem_seg": K x H x W} out)."""
    return issubclass(META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE), SemanticSegmentor)


class GradScalerOverflowLogger(HookBase):
    """Make AMP's silently skipped optimizer steps visible.

    ``GradScaler`` skips the step and halves the loss scale when gradients overflow; without a
    trace, a run that skips most steps just looks like one that does not learn. Logs a warning per
    skip and records ``amp/loss_scale`` and ``amp/skipped_steps`` in the event storage.
    """

    def __init__(self, grad_scaler: Any) -> None:
        self._grad_scaler = grad_scaler
        self._scale: Optional[float] = None
        self.skipped = 0

    def before_train(self) -> None:
        self._scale = self._grad_scaler.get_scale()

    def after_step(self) -> None:
        scale = self._grad_scaler.get_scale()
        if self._scale is not None and scale < self._scale:
            self.skipped += 1
            logger.warning(
                f"AMP: inf/NaN gradients at iteration {self.trainer.iter}: optimizer step skipped, "
                f"loss scale {self._scale:g} -> {scale:g} ({self.skipped} skipped step(s) so far)"
            )
        self._scale = scale
        self.trainer.storage.put_scalar("amp/loss_scale", scale, smoothing_hint=False)
        self.trainer.storage.put_scalar("amp/skipped_steps", self.skipped, smoothing_hint=False)


class LRScheduler(hooks.LRScheduler):
    """Detectron2's hook (same name, so checkpoints keep its state under "LRScheduler"), logging the
    learning rate by parameter role: ``lr`` is the base learning rate (SOLVER.BASE_LR times the
    schedule, the group of the "rest" of the model), ``lr/image_encoder`` (x SOLVER.BACKBONE_MULTIPLIER),
    ``lr/text_tower``, ``lr/text_prompt`` the others. Detectron2 logs as ``lr`` the group with the
    most tensors, here the image encoder's, which showed BASE_LR 2e-4 as 2e-05."""

    def before_train(self) -> None:
        super().before_train()
        role_of = {id(p): role for role, params in model_parameter_groups(self.trainer.model).items() for _, p in params}
        groups_of_role: Dict[str, Counter] = {}
        for i, group in enumerate(self._optimizer.param_groups):
            for param in group["params"]:
                groups_of_role.setdefault(role_of.get(id(param), "rest"), Counter())[i] += 1
        # For each role, the group holding most of its tensors (biases may have their own factor).
        self._logged_groups = {
            ("lr" if role == "rest" else f"lr/{role}"): counts.most_common(1)[0][0]
            for role, counts in groups_of_role.items()
        }
        self._logged_groups.setdefault("lr", self._best_param_group_id)

    def after_step(self) -> None:
        for name, i in self._logged_groups.items():
            self.trainer.storage.put_scalar(name, self._optimizer.param_groups[i]["lr"], smoothing_hint=False)
        self.scheduler.step()


class AutocastTrainer(SimpleTrainer):
    """Mixed-precision training steps in ``dtype`` on ``device_type``: autocast around the forward
    pass and the losses, a ``GradScaler`` for float16 (bfloat16 has float32's range and needs none).

    Detectron2 v0.6's ``AMPTrainer`` is float16 on CUDA only; this one also trains in bfloat16, on
    CUDA or CPU. The scaler (``grad_scaler``, None for bfloat16) is saved with the optimizer.
    """

    def __init__(self, model: torch.nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer,
                 dtype: torch.dtype = torch.float16, device_type: str = "cuda") -> None:
        super().__init__(model, data_loader, optimizer)
        self.dtype = dtype
        self.device_type = device_type
        self.grad_scaler = torch.amp.GradScaler(device_type) if dtype == torch.float16 else None

    def run_step(self) -> None:
        assert self.model.training, "[AutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast(self.device_type, dtype=self.dtype):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses, loss_dict = loss_dict, {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        if self.grad_scaler is None:
            losses.backward()
            self._write_metrics(loss_dict, data_time)
            self.optimizer.step()
        else:
            self.grad_scaler.scale(losses).backward()
            self._write_metrics(loss_dict, data_time)
            self.grad_scaler.step(self.optimizer)  # unscales first: gradient clipping sees true norms
            self.grad_scaler.update()

    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` for DenseCLIP.

    ``__init__`` re-does DefaultTrainer's assembly (same order: model, optimizer, data, DDP, step
    trainer, scheduler, checkpointer, hooks) because three of its pieces are fixed inside it in
    v0.6: DDP always gets a CUDA ``device_ids`` (fails for CPU processes), AMP always asserts CUDA,
    and the checkpointer is not atomic. Checkpoints also carry the optimizer state (v0.6 drops it).
    """

    def __init__(self, cfg: CfgNode) -> None:
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):  # setup() was not called
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        if next(model.parameters()).device.type == "cpu" and torch.set_flush_denormal(True):
            # Tiny warm-up learning rates and randomly initialised layers produce subnormal floats,
            # on which x86 CPU kernels run tens of times slower (seen: 0.4 s -> 20 s/iteration).
            logger.info("CPU training: subnormal floats are flushed to zero")
        model = self._wrap_ddp(model)
        self._trainer = self.build_step_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = self.build_checkpointer(cfg, model, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def state_dict(self) -> Dict[str, Any]:
        """Also the step trainer's state (optimizer, AMP gradient scaler): v0.6's DefaultTrainer
        saves only the iteration and hook states, so ``--resume`` restarted AdamW's moments from
        zero. Same layout ("_trainer") as upstream Detectron2."""
        ret = TrainerBase.state_dict(self)
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        TrainerBase.load_state_dict(self, state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning("Checkpoint has no optimizer state (saved by Detectron2 v0.6's DefaultTrainer)")

    @staticmethod
    def _wrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
        """DDP when there are several processes; CPU modules must get no ``device_ids``."""
        on_cpu = next(model.parameters()).device.type == "cpu"
        return create_ddp_model(model, broadcast_buffers=False, **({"device_ids": None} if on_cpu else {}))

    @classmethod
    def build_step_trainer(
        cls, cfg: CfgNode, model: torch.nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer
    ) -> SimpleTrainer:
        """``AutocastTrainer`` in SOLVER.AMP.PRECISION when SOLVER.AMP.ENABLED (float16 on CUDA,
        bfloat16 on CUDA or CPU); otherwise ``SimpleTrainer``. float16 on CPU is turned off with a
        warning instead of crashing at the first iteration."""
        if cfg.SOLVER.AMP.ENABLED:
            precision = cfg.SOLVER.AMP.PRECISION
            if precision not in ("float16", "bfloat16"):
                raise ConfigError(f"SOLVER.AMP.PRECISION must be 'float16' or 'bfloat16', got {precision!r}")
            device_type = next(model.parameters()).device.type
            if device_type == "cuda" or precision == "bfloat16":
                return AutocastTrainer(model, data_loader, optimizer, getattr(torch, precision), device_type)
            logger.warning(
                "SOLVER.AMP.ENABLED is ignored: float16 AMP needs CUDA (SOLVER.AMP.PRECISION bfloat16 "
                "runs on CPU); training in float32"
            )
        return SimpleTrainer(model, data_loader, optimizer)

    @classmethod
    def build_checkpointer(cls, cfg: CfgNode, model: torch.nn.Module, **checkpointables: Any) -> AtomicDetectionCheckpointer:
        """The crash-safe checkpointer, with MODEL.REINIT_VOCABULARY_MISMATCH as mismatch policy."""
        return AtomicDetectionCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            reinit_mismatched=cfg.MODEL.REINIT_VOCABULARY_MISMATCH,
            **checkpointables,
        )

    def build_hooks(self) -> List[HookBase]:
        """Detectron2's hooks, the lr logged by role (:class:`LRScheduler`), writers every
        SOLVER.LOG_PERIOD iterations, and the AMP overflow log."""
        ret = super().build_hooks()
        for i, hook in enumerate(ret):
            if type(hook) is hooks.LRScheduler:
                ret[i] = LRScheduler(hook._optimizer, hook._scheduler)
            elif isinstance(hook, hooks.PeriodicWriter):
                # Same writers (already opened by DefaultTrainer), another period.
                ret[i] = hooks.PeriodicWriter(hook._writers, period=self.cfg.SOLVER.LOG_PERIOD)
        grad_scaler = getattr(self._trainer, "grad_scaler", None)
        if grad_scaler is not None:
            ret.insert(1, GradScalerOverflowLogger(grad_scaler))
        return ret

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        """Detectron2's ``build_model``. In CPU processes (gloo) its ``torch.nn.SyncBatchNorm`` layers
        (NORM "SyncBN" of Detectron2's heads, FPN or ResNet), which DDP refuses on CPU ("SyncBatchNorm
        layers only work with GPU modules"), become :class:`CPUSyncBatchNorm`: the same statistics
        over all processes, the same state-dict keys. GPU processes keep ``torch.nn.SyncBatchNorm``."""
        model = build_model(cfg)
        if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
            model = sync_batchnorm_to_cpu(model)
            synchronised = sum(isinstance(m, CPUSyncBatchNorm) for m in model.modules())
            logger.info(f"CPU processes: {synchronised} SyncBatchNorm layers -> CPUSyncBatchNorm (gloo)")
        logger.info(f"Model:\n{model}")
        return model

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer) -> Any:
        return build_lr_scheduler(cfg, optimizer)

    @staticmethod
    def _mapper(cfg: CfgNode, is_train: bool) -> RobustDatasetMapper:
        """The data package's mappers, which skip unreadable images (and repair bad annotations)
        instead of killing a long run: ``SemSegDatasetMapper`` (the reference's segmentation
        pipeline) for semantic segmentors, ``RobustDatasetMapper`` for detectors."""
        mapper_class = SemSegDatasetMapper if is_semantic_segmentation(cfg) else RobustDatasetMapper
        return mapper_class(cfg, is_train=is_train)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Iterable:
        return build_detection_train_loader(cfg, mapper=cls._mapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> Iterable:
        return build_detection_test_loader(cfg, dataset_name, mapper=cls._mapper(cfg, False))

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators: Any = None) -> Dict[str, Any]:
        """Detectron2's ``test``, one dataset at a time, each with the model of
        :func:`~denseclip.evaluation.evaluation_model` (open-vocabulary sets: all their names)."""
        if isinstance(evaluators, DatasetEvaluator):
            evaluators = [evaluators]
        results: Dict[str, Any] = OrderedDict()
        for index, dataset_name in enumerate(cfg.DATASETS.TEST):
            one = cfg.clone()
            one.defrost()
            one.DATASETS.TEST = (dataset_name,)
            chosen = [evaluators[index]] if evaluators is not None else None
            results[dataset_name] = super().test(one, evaluation_model(model, dataset_name), chosen)
        return list(results.values())[0] if len(results) == 1 else results

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluator:
        """By the dataset's evaluator_type, as Detectron2's tools do: "sem_seg" -> SemSegEvaluator
        (mIoU, fwIoU, mACC, pACC), otherwise COCO box (and mask) AP."""
        if MetadataCatalog.get(dataset_name).get("evaluator_type", None) == "sem_seg":
            if output_folder is None:
                output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
            return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
        return build_coco_evaluator(cfg, dataset_name, output_folder)
