#!/usr/bin/env python
"""DenseCLIP for Detectron2. Install with scripts/setup.sh (which also builds Detectron2)."""
from setuptools import find_packages, setup

setup(
    name="denseclip-detectron2",
    version="0.1.0",
    description="DenseCLIP (language-guided dense prediction with CLIP) for Detectron2",
    packages=find_packages("projects/DenseCLIP", exclude=("tests",)),
    package_dir={"": "projects/DenseCLIP"},
    package_data={"denseclip": ["model_configs/*.json"]},
    python_requires=">=3.9",
    # Detectron2 and torch are installed by scripts/setup.sh (Detectron2 is not on PyPI); the exact
    # versions of everything are pinned in requirements/lock.txt.
    install_requires=[
        "open_clip_torch==3.3.0",
        "fvcore==0.1.5.post20221221",
        "iopath==0.1.9",
        "pycocotools==2.0.11",
        "opencv-python-headless==4.12.0.88",
    ],
    extras_require={
        # The web demo (python demo.py --web); scripts/setup.sh installs it with the exact versions
        # of its dependencies from requirements/web.txt.
        "web": ["gradio==6.31.0", "gradio_client==2.7.2"],
        # tools/deploy (export to ONNX with torch.onnx's exporters, run in ONNX Runtime) and its
        # tests; the dependencies these pull in beyond requirements/lock.txt are pinned too.
        "deploy": [
            "onnx==1.23.2",
            "onnxscript==0.7.2",
            "onnx-ir==1.1.0",
            "onnxruntime==1.32.0",
            "ml_dtypes==0.7.0",
            "flatbuffers==25.12.19",
        ],
    },
)
