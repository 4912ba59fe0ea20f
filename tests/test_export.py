"""Export (ONNX, torch.export, traced TorchScript) of the detectors with the vocabulary baked in,
and the runners: on real photos the exported model's detections equal the PyTorch model's, also
from tools/deploy/onnx_infer.py in a process that cannot import PyTorch."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "MODEL.CLIP.MODEL_NAME", "RN-tiny", "MODEL.CLIP.MODEL_CONFIG_FILE", "RN-tiny.json",
    "MODEL.DENSECLIP.CLASS_NAMES", ["cat", "dog", "person"],
    "MODEL.FPN.OUT_CHANNELS", 64, "MODEL.ROI_BOX_HEAD.FC_DIM", 256, "MODEL.ROI_MASK_HEAD.CONV_DIM", 64,
    "MODEL.DENSECLIP.CONTEXT_DECODER.WIDTH", 64,
    # Small photos, resized to other sizes than the export's example input (dynamic sizes).
    "INPUT.MIN_SIZE_TEST", 160, "INPUT.MAX_SIZE_TEST", 224,
]
RETINANET = "COCO/retinanet_denseclip_R50_FPN_1x.yaml"  # paper: stock head, grid_crop positions
RETINANET_LANGUAGE = "COCO/retinanet_denseclip_language_R50_FPN_1x.yaml"
MASK_RCNN = "COCO/mask_rcnn_denseclip_R50_FPN_1x.yaml"  # paper: stock ROI heads
MASK_RCNN_LANGUAGE = "COCO/mask_rcnn_denseclip_language_R50_FPN_1x.yaml"


def spread_scores(model: torch.nn.Module) -> torch.nn.Module:
    """Random init gives every candidate nearly the same score (CLIP zero-initialises each residual
    branch's last BN, Detectron2's heads start at std 0.01), so the order of detections would be
    float noise. Unit-gain weights give scores spread like a trained model's."""
    for name, module in model.named_modules():
        if name.startswith(("backbone.", "fpn.", "head.", "proposal_generator.", "roi_heads.")) and isinstance(
            module, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d)
        ):
            torch.nn.init.kaiming_normal_(module.weight)
            if name.endswith(("bbox_pred", "anchor_deltas")):
                module.weight.data *= 0.05  # boxes near their anchors / proposals
            elif name.endswith(("cls_score", "objectness_logits")):
                module.weight.data *= 0.1  # scores not saturated at 1
    for name, param in model.backbone.named_parameters():
        if name.endswith("bn3.weight"):
            torch.nn.init.ones_(param)
    return model


def photo_inputs(root: Path, cfg, count: int = 2):
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    inputs = []
    for path in sorted((root / "val2017").glob("*.jpg"))[:count]:
        image = read_image(str(path), format=cfg.INPUT.FORMAT)
        resized = aug.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))).float()
        inputs.append({"image": tensor, "height": image.shape[0], "width": image.shape[1]})
    return inputs


def box_tolerance(x: dict) -> float:
    """1e-3 px at the resolution the model sees. The tests show the photos to tiny models at about a
    quarter of their size, and Detectron2 scales the boxes back to the photo, which multiplies a
    float difference of the two runtimes (a few ulps) by the same factor."""
    return 1e-3 * max(x["height"] / x["image"].shape[-2], x["width"] / x["image"].shape[-1])


def assert_parity(model, runner, inputs):
    from denseclip.deploy.parity import compare_predictions

    sizes, detections = set(), 0
    for x in inputs:
        with torch.no_grad():
            expected = model([x])[0]
        report = compare_predictions(expected, runner([x])[0])
        n = report["detections"][0]
        assert report["detections"] == (n, n), report
        detections += n
        assert report["labels_equal"], report
        assert report["max_box_diff"] <= box_tolerance(x) and report["max_score_diff"] <= 1e-4, report
        assert report["min_mask_iou"] >= 0.99, report
        sizes.add(tuple(x["image"].shape[-2:]))
    assert len(sizes) > 1  # one export, several input sizes
    assert detections >= 10


# A sitecustomize that makes importing PyTorch, torchvision, Detectron2 or this project fail.
TORCH_BLOCKER = """import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "detectron2", "denseclip"):
            raise ImportError(name + " is blocked: the runner must not need it")
sys.meta_path.insert(0, _Blocked())
"""


def run_without_torch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """tools/deploy/onnx_infer.py in a fresh interpreter where ``import torch`` raises."""
    blocker = tmp_path / "no_torch"
    if not blocker.is_dir():
        blocker.mkdir()
        (blocker / "sitecustomize.py").write_text(TORCH_BLOCKER)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(blocker), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", "import torch"]
    assert "torch is blocked" in subprocess.run(command, env=env, capture_output=True, text=True).stderr
    command = [sys.executable, str(REPO_ROOT / "tools" / "deploy" / "onnx_infer.py"), "--threads", "1", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=True)


def onnx_ops(graph) -> set:
    """Op types of an ONNX graph and its subgraphs (NMS runs in an ``If``: no boxes, no NMS)."""
    ops = set()
    for node in graph.node:
        ops.add(node.op_type)
        for attribute in node.attribute:
            ops |= onnx_ops(attribute.g) if attribute.g.node else set()
    return ops


def decode_rle(rle: dict) -> torch.Tensor:
    values = np.concatenate([np.full(n, i % 2, dtype=bool) for i, n in enumerate(rle["counts"])])
    return torch.from_numpy(values.reshape(rle["size"], order="F").copy())


def assert_runner_without_torch_matches(model, export_dir: Path, photos, tmp_path: Path) -> None:
    """onnx_infer.py on each photo (its own reading and resizing) gives the model's detections."""
    from detectron2.structures import Boxes, Instances

    from denseclip.deploy.parity import compare_predictions

    for i, (photo, x) in enumerate(photos):
        out = tmp_path / f"photo{i}.json"
        run_without_torch(tmp_path, "--model", str(export_dir), "--input", str(photo), "--output", str(out))
        report = json.loads(out.read_text())
        assert (tmp_path / f"photo{i}.png").is_file()
        found = Instances((x["height"], x["width"]))
        found.pred_boxes = Boxes(torch.tensor([d["box"] for d in report["detections"]]).reshape(-1, 4))
        found.scores = torch.tensor([d["score"] for d in report["detections"]])
        found.pred_classes = torch.tensor([d["class"] for d in report["detections"]], dtype=torch.int64)
        if report["detections"] and "mask" in report["detections"][0]:
            found.pred_masks = torch.stack([decode_rle(d["mask"]) for d in report["detections"]])
        with torch.no_grad():
            expected = model([x])[0]
        result = compare_predictions(expected, {"instances": found})
        assert result["detections"][0] > 0 and result["detections"][0] == result["detections"][1], result
        assert result["labels_equal"] and result["max_box_diff"] <= box_tolerance(x), result
        assert result["max_score_diff"] <= 1e-4, result
        assert result["min_mask_iou"] >= 0.99, result
        assert [d["label"] for d in report["detections"]] == [model.class_names[c] for c in expected["instances"].pred_classes]


@pytest.mark.parametrize("config_file,fmt", [
    (RETINANET, "onnx"),
    (MASK_RCNN, "onnx"),
    (MASK_RCNN_LANGUAGE, "onnx"),
    (RETINANET_LANGUAGE, "torch.export"),
])
def test_export_matches_pytorch_on_photos(config_file, fmt, make_cfg, tiny_coco_root, tmp_path):
    from denseclip.deploy import ExportedModel, export_model

    cfg = make_cfg(config_file, TINY + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.1, "MODEL.RETINANET.SCORE_THRESH_TEST", 0.02])
    model = spread_scores(build_model(cfg)).eval()
    export_dir = tmp_path / "export"
    manifest = export_model(model, cfg, str(export_dir), fmt)

    assert manifest["class_names"] == ["cat", "dog", "person"]
    if fmt == "onnx":  # one graph, pixels to detections
        expected_graphs = {"model"}
    else:
        expected_graphs = {"model", "box_head", "mask_head"} if "mask_rcnn" in config_file else {"model"}
    assert set(manifest["graphs"]) == expected_graphs
    assert json.loads((export_dir / "denseclip_export.json").read_text()) == manifest
    runner = ExportedModel(str(export_dir))
    assert runner.class_names == ["cat", "dog", "person"]
    inputs = photo_inputs(tiny_coco_root, cfg)
    assert_parity(model, runner, inputs)
    if fmt != "onnx":
        return

    import onnx

    graph = onnx.load(str(export_dir / "model.onnx"), load_external_data=False)
    assert json.loads({p.key: p.value for p in graph.metadata_props}["denseclip.class_names"]) == ["cat", "dog", "person"]
    outputs = ["boxes", "scores", "classes"] + (["mask_probs"] if "mask_rcnn" in config_file else []) + ["score_map"]
    assert [o.name for o in graph.graph.output] == manifest["graphs"]["model"]["outputs"] == outputs
    # uint8 pixels of any height and width; post-processing in standard ONNX ops.
    (image,) = graph.graph.input
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [bool(d.dim_param) for d in image.type.tensor_type.shape.dim] == [True, True, False]
    ops = onnx_ops(graph.graph)
    assert {"TopK", "NonMaxSuppression"} <= ops and ("RoiAlign" in ops) == ("mask_rcnn" in config_file)
    assert not [i.name for i in graph.graph.initializer if "prompt_encoder" in i.name or "clip_text" in i.name]
    photos = sorted((tiny_coco_root / "val2017").glob("*.jpg"))[:2]
    assert_runner_without_torch_matches(model, export_dir, list(zip(photos, inputs)), tmp_path)


def test_pre_model_prompting_exports_with_the_text_tower_in_the_graph(make_cfg, tiny_coco_root, tmp_path):
    """MODEL.DENSECLIP.PROMPTING "pre": the text depends on the image, so the one ONNX graph holds
    the context decoder over the queries and the frozen CLIP text tower over the vocabulary's
    tokens; it matches eager on photos, with and without PyTorch. The split formats refuse it."""
    import onnx

    from denseclip.deploy import ExportedModel, export_model

    opts = TINY + ["MODEL.RETINANET.SCORE_THRESH_TEST", 0.02, "MODEL.DENSECLIP.PROMPTING", "pre"]
    cfg = make_cfg(RETINANET_LANGUAGE, opts)
    model = spread_scores(build_model(cfg)).eval()
    with pytest.raises(ValueError, match="PROMPTING 'pre' exports with --format onnx only, got 'torch.export'"):
        export_model(model, cfg, str(tmp_path / "pt2"), "torch.export")
    assert not (tmp_path / "pt2").exists()
    export_dir = tmp_path / "export"
    manifest = export_model(model, cfg, str(export_dir), "onnx")
    assert manifest["text_tower_in_graph"] is True and manifest["class_names"] == ["cat", "dog", "person"]
    graph = onnx.load(str(export_dir / "model.onnx"), load_external_data=False)
    assert any(i.name.startswith("model.text_side.prompt_encoder.clip_text.") for i in graph.graph.initializer)
    tower_bytes = sum(p.numel() * 4 for p in model.text_side.prompt_encoder.parameters())
    assert (export_dir / "model.onnx").stat().st_size > tower_bytes  # the tower's weights are in the file
    inputs = photo_inputs(tiny_coco_root, cfg)
    assert_parity(model, ExportedModel(str(export_dir)), inputs)
    photos = sorted((tiny_coco_root / "val2017").glob("*.jpg"))[:1]
    assert_runner_without_torch_matches(model, export_dir, list(zip(photos, inputs)), tmp_path)


def test_segmentation_export_matches_pytorch_on_photos(make_cfg, tiny_coco_root, tmp_path):
    """DenseCLIP Semantic FPN (paper architecture, RN-tiny), one ONNX export: the graph is the
    model's encode_decode on one unpadded view of any size; whole-image, sliding-window (64 px
    windows) and multi-scale + flip inference (TEST.SEM_SEG) around it, as the model does, in the
    Python runner and in the runner without PyTorch. Photos resized to sides that are not
    multiples of 32."""
    from PIL import Image
    from tiny_semseg import BASE_CONFIG, CLASSES, tiny_opts

    from denseclip.deploy import ExportedModel, export_model
    from denseclip.deploy.parity import compare_predictions

    multi_scale = ["TEST.SEM_SEG.MODE", "slide", "TEST.SEM_SEG.SCALES", (0.75, 1.25), "TEST.SEM_SEG.FLIP", True]
    cfg = make_cfg(BASE_CONFIG, tiny_opts(extra=["INPUT.MIN_SIZE_TEST", 70, "INPUT.MAX_SIZE_TEST", 120, *multi_scale]))
    model = spread_scores(build_model(cfg)).eval()
    manifest = export_model(model, cfg, str(tmp_path / "export"), "onnx")
    assert manifest["class_names"] == CLASSES and manifest["graphs"]["model"]["outputs"] == ["sem_seg"]
    inputs = photo_inputs(tiny_coco_root, cfg)
    assert all(side % 32 for x in inputs for side in x["image"].shape[-2:])
    modes = {  # name: TEST.SEM_SEG MODE, SCALES, FLIP; photos
        "whole": ("whole", (1.0,), False, inputs),
        "slide": ("slide", (1.0,), False, inputs),
        "multi-scale slide + flip": ("slide", (0.75, 1.25), True, inputs[:1]),
    }
    for name, (mode, scales, flip, photos) in modes.items():
        model.test_mode, model.test_scales, model.test_flip = mode, scales, flip
        opts = ["TEST.SEM_SEG.MODE", mode, "TEST.SEM_SEG.SCALES", scales, "TEST.SEM_SEG.FLIP", flip]
        runner = ExportedModel(str(tmp_path / "export"), opts)
        for x in photos:
            with torch.no_grad():
                expected = model([x])[0]
            actual = runner([x])[0]
            assert actual["sem_seg"].shape == (len(CLASSES), x["height"], x["width"])
            assert compare_predictions(expected, actual)["argmax_agreement"] >= 0.999, name
    # Without PyTorch, the export's own test-time views (multi-scale slide + flip).
    photo = sorted((tiny_coco_root / "val2017").glob("*.jpg"))[0]
    run_without_torch(tmp_path, "--model", str(tmp_path / "export"), "--input", str(photo), "--output", str(tmp_path / "seg.json"))
    report = json.loads((tmp_path / "seg.json").read_text())
    labels = torch.from_numpy(np.asarray(Image.open(report["sem_seg"]["labels"])).astype(np.int64))
    with torch.no_grad():
        expected = model([inputs[0]])[0]["sem_seg"].argmax(0)
    assert labels.shape == expected.shape and (labels == expected).float().mean() >= 0.999
    assert set(report["sem_seg"]["classes"]) <= set(CLASSES)


def test_export_command_with_vocabulary_torchscript(tiny_coco_root, tmp_path, monkeypatch):
    """tools/deploy/export_model.py on a language-guided Mask R-CNN with --vocabulary: traced
    TorchScript (with PyTorch's deprecation said), the vocabulary recorded, the sample-image check."""
    from denseclip.deploy import ExportedPredictor, parity

    reports = []
    compare = parity.compare_predictions
    monkeypatch.setattr(parity, "compare_predictions", lambda a, b: reports.append(compare(a, b)) or reports[-1])
    sys.path.insert(0, str(REPO_ROOT / "tools" / "deploy"))
    monkeypatch.chdir(REPO_ROOT)
    import export_model as command

    photo = sorted((tiny_coco_root / "val2017").glob("*.jpg"))[0]
    out = tmp_path / "export"
    opts = ["MODEL.CLIP.PRETRAINED", "", "MODEL.DENSECLIP.CLASS_NAMES", "['a', 'b']"] + [str(v) for v in TINY[:4] + TINY[6:]]
    with pytest.warns(FutureWarning, match="TorchScript is deprecated"):
        assert command.main(["--config-file", f"configs/{MASK_RCNN_LANGUAGE}", "--output", str(out), "--format", "torchscript",
                             "--vocabulary", "cat,remote control", "--sample-image", str(photo), *opts]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["box_head.ts", "config.yaml", "denseclip_export.json", "mask_head.ts", "model.ts"]
    # --sample-image: the traced graphs, on a photo of another size than the trace's, give the
    # PyTorch model's detections (same kernels: equal up to the order of float sums).
    (report,) = reports
    assert report["detections"][0] > 0 and report["labels_equal"], report
    assert report["max_box_diff"] <= 1e-3 and report["max_score_diff"] <= 1e-4 and report["min_mask_iou"] >= 0.99, report
    predictor = ExportedPredictor(str(out))
    assert predictor.class_names == ["cat", "remote control"]
    image = read_image(str(photo), format="BGR")
    instances = predictor(image)["instances"]
    assert instances.image_size == image.shape[:2] and instances.pred_masks.shape[-2:] == image.shape[:2]
    with pytest.raises(ValueError, match="exported vocabulary"):
        ExportedPredictor(str(out), vocabulary="cat")

    # demo.py --onnx: the export's config and vocabulary, score maps from the graph's output.
    from denseclip.demo_cli import get_parser, run_demo

    drawn = tmp_path / "drawn"
    args = get_parser().parse_args(["--onnx", str(out), "--input", str(photo), "--output", str(drawn), "--score-maps",
                                    "--confidence-threshold", "0.1"])
    summary = run_demo(args)
    assert summary.exit_code == 0 and summary.num_images == 1
    assert sorted(p.name for p in drawn.iterdir()) == sorted(
        f"{photo.stem}{suffix}.jpg" for suffix in ("", "_scoremap_cat", "_scoremap_remote_control"))
    assert summary.predictor.cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.1


def test_runner_errors_name_the_problem(tmp_path, monkeypatch):
    from denseclip.deploy import ExportedModel, import_onnxruntime

    with pytest.raises(FileNotFoundError, match="denseclip_export.json"):
        ExportedModel(str(tmp_path))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"\.\[deploy\]"):
        import_onnxruntime()
    sys.path.insert(0, str(REPO_ROOT / "tools" / "deploy"))
    import onnx_infer

    with pytest.raises(onnx_infer.ExportError, match="denseclip_export.json is missing"):
        onnx_infer.Export(str(tmp_path))
    (tmp_path / "denseclip_export.json").write_text(json.dumps({"format": "torch.export", "layout": "parts"}))
    with pytest.raises(onnx_infer.ExportError, match="takes --format onnx exports"):
        onnx_infer.Export(str(tmp_path))
