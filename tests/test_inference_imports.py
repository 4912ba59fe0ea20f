"""Inference does not import training: the predictor, the demos (command line and web) and deploy
(export, exported models) load none of this project's training modules. Checked in a fresh
interpreter, where nothing else has imported them first."""
import importlib.util
import json
import os
import subprocess
import sys

# This project's training side: the Trainer and its setup, the recipe's optimizer and schedules, the
# launcher, and the evaluators. (Detectron2 keeps DefaultPredictor and DefaultTrainer in one module,
# detectron2.engine.defaults, which any DefaultPredictor subclass imports: it is not ours to split.)
TRAINING_MODULES = ("denseclip.engine", "denseclip.evaluation")
INFERENCE_MODULES = ["denseclip.predictor", "denseclip.demo_cli", "denseclip.deploy", "denseclip.web_demo"]
if importlib.util.find_spec("gradio") is not None:  # the optional "web" extra
    INFERENCE_MODULES.append("denseclip.web_demo.app")


def test_inference_imports_no_training_module():
    code = (
        "import importlib, json, sys\n"
        f"for name in {INFERENCE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(INFERENCE_MODULES) <= set(loaded)
    training = [m for m in loaded if m.startswith(TRAINING_MODULES)]
    assert training == [], f"inference imports training modules: {training}"
