"""Speed, memory, FLOPs and parameters of DenseCLIP vs its CLIP baselines and Detectron2's R50-FPN.

Every config is built in ONE process, with the same seed and the same synthetic inputs, and measured
for training iteration time, inference latency (batch 1) and throughput, peak memory of each phase,
FLOPs (fvcore through Detectron2's FlopCountAnalysis) and parameters, and for DenseCLIP the number
of text-encoder calls during timed inference (must be 0) and a per-component time breakdown.
The time targets are checked on paired rounds (DenseCLIP and its baseline timed in alternation).

    python tools/benchmark.py --device cuda --output-json bench.json --output-md bench.md
    python tools/benchmark.py --device cpu --sizes 640x384 --repeats 3 --skip-flops

A program over the ``denseclip`` library, not part of it: ``tools/benchmark.py`` puts tools/ on
``sys.path`` and imports this package as ``benchmarking``.

Modules, by concern:

* ``cli``: options and the run over configs, pairs and targets (``main``)
* ``configs``: default configs, paper figures, loading with random weights, config description
* ``components``: which submodule is the image encoder, text encoder, context decoder, FPN, heads
  (the one place that knows the models' layout); parameter counts; the text-encoder call counter
* ``inputs``: synthetic images and training targets
* ``workload``: model building, FrozenBN calibration, proposals / detections actually processed
* ``timing``: timed repetitions and their statistics, AMP autocast
* ``memory``: peak memory of a phase (CUDA allocator, or peak RSS on CPU)
* ``flops``: fvcore FLOPs in total, per component and per operator
* ``phases``: one config measured (training, latency, throughput, profile, breakdown, utilisation)
* ``breakdown``: per-component inference time from forward hooks
* ``profiling``: torch.profiler's top operators
* ``paired``: DenseCLIP / CLIP-baseline rounds timed in alternation
* ``machine``: machine and software description, GPU peak TFLOP/s, utilisation
* ``targets``: comparisons (ratios) and target checks
* ``report``: Markdown, console summary, JSON
"""
