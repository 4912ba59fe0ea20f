"""``python tools/gpu_check.py``: one run that proves the GPU path (``scripts/gpu_check.sh``).

1. trains each entry of ``TRAIN_RUNS`` (the paper's Mask R-CNN, its language-guided variant and
   RetinaNet) for a few iterations at 1333x800, batch 2, with ``SOLVER.AMP.ENABLED`` in float16 and
   bfloat16, evaluates it (under autocast) on tiny_coco when ``$DENSECLIP_TINY_COCO`` holds it, else
   on the generated synthetic set, and runs the demo on a few images;
2. runs the benchmark (``tools/benchmarking``, in process) in fp32 and AMP: paired DenseCLIP /
   CLIP-baseline ratios, peak memory, images/s, achieved TFLOP/s and fraction of the GPU's peak, vs
   Detectron2's R50-FPN Mask R-CNN;
3. writes report.md and report.json, and exits non-zero on any failure: an exception, a non-finite
   loss, a text-encoder call at inference after the first image, a benchmark target missed.

``--device cpu --tiny`` is the dry run of the same code (tests/test_gpu_check.py): RN-tiny CLIP
towers, 128-pixel inputs (64 in the benchmark), two iterations, bfloat16 autocast; its timings are not checked.

Modules: ``cli`` (options, the run, checks), ``training`` (data, train / evaluate / demo),
``benchmarks`` (the benchmark runs and their headline figures), ``report`` (Markdown). A program
over the ``denseclip`` library, not part of it: ``tools/gpu_check.py`` puts tools/ on ``sys.path``
and imports this package as ``gpu_checking`` (and the benchmark as ``benchmarking``).
"""
from typing import List, NamedTuple, Tuple


class TrainRun(NamedTuple):
    name: str
    config: str
    opts: Tuple[str, ...] = ()


# What gpu_check trains (one place to edit when configs are renamed).
TRAIN_RUNS: List[TrainRun] = [
    TrainRun("mask_rcnn_denseclip_R50_FPN_1x (the paper's model)", "configs/COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml"),
    TrainRun("mask_rcnn_denseclip_language_R50_FPN_1x (language-guided)",
             "configs/COCO/mask_rcnn_denseclip_language_R50_FPN_1x.yaml"),
    TrainRun("retinanet_denseclip_R50_FPN_1x (the paper's model)", "configs/COCO/retinanet_denseclip_R50_FPN_1x.yaml"),
]
