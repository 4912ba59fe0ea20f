#!/usr/bin/env python
"""Train or evaluate a DenseCLIP / CLIP-baseline detector (Detectron2's tools/train_net.py, for
this project).

    python train_net.py --config-file configs/COCO/retinanet_denseclip_R50_FPN_1x.yaml --num-gpus 8
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file CFG --eval-only --onnx export/   # an export of tools/deploy/export_model.py
    python train_net.py --config-file CFG --dataset my_train=ann.json:images/ DATASETS.TRAIN "('my_train',)"

Without GPUs, ``--num-gpus N --cpu-processes`` trains with N CPU processes (gloo); ``--resume``
continues from the ``last_checkpoint`` of OUTPUT_DIR. ``--eval-only`` writes its config.yaml,
log.txt and inference/ results into a new folder OUTPUT_DIR/eval/<weights name> (``-2``, ... when it
exists): what the training run wrote in OUTPUT_DIR is never overwritten.
"""
import argparse
import os
from typing import Any

from denseclip.cli_errors import fail
from denseclip.engine import (
    ConfigError,
    IncompatibleCheckpointError,
    LaunchError,
    Trainer,
    cpu_processes_requested,
    default_argument_parser,
    launch,
    redirect_evaluation_output,
    setup,
)
from denseclip.reference_checkpoint import ReferenceCheckpointError


def main(args: argparse.Namespace) -> Any:
    cfg = setup(args)
    if args.eval_only and args.onnx:
        return Trainer.test(cfg, exported_model(args.onnx, cfg))
    if args.eval_only:
        model = Trainer.build_model(cfg)
        # --resume reads the training run's last_checkpoint, not the evaluation's own folder.
        training = cfg.clone()
        training.defrost()
        training.OUTPUT_DIR = getattr(args, "training_output_dir", cfg.OUTPUT_DIR)
        Trainer.build_checkpointer(training, model).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def exported_model(path: str, cfg) -> Any:
    """The export at ``path`` (denseclip.deploy.ExportedModel), checked against the config's vocabulary."""
    from denseclip.deploy import ExportedModel

    model = ExportedModel(path)
    if model.class_names != list(cfg.MODEL.DENSECLIP.CLASS_NAMES):
        raise ConfigError(
            f"--onnx {path}: the export detects {len(model.class_names)} classes ({', '.join(model.class_names[:5])}, ...), "
            f"the config's datasets {len(cfg.MODEL.DENSECLIP.CLASS_NAMES)} ({', '.join(cfg.MODEL.DENSECLIP.CLASS_NAMES[:5])}, ...)"
        )
    return model


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    if args.onnx and not args.eval_only:
        fail("train_net.py", f"--onnx {args.onnx}: an export is evaluated, not trained; add --eval-only")
    if args.onnx and not os.path.exists(args.onnx):
        fail("train_net.py", f"--onnx '{args.onnx}': no such export folder (export with tools/deploy/export_model.py --output {args.onnx})")
    try:
        if args.eval_only:
            print(f"train_net.py: --eval-only writes to {redirect_evaluation_output(args)} (the training run's files stay as they are)")
        print("Command Line Args:", args)
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            cpu_processes=cpu_processes_requested(args),
        )
    # a config, command-line or weights-file mistake (ReferenceCheckpointError is a ValueError): its message, no traceback
    except (ConfigError, LaunchError, FileNotFoundError, IncompatibleCheckpointError, ReferenceCheckpointError) as e:
        fail("train_net.py", e)
