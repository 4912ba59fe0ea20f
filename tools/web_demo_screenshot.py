#!/usr/bin/env python
"""A screenshot of the web demo with a result (docs/web_demo.png in the README): serves the page of
``demo.py --web`` on a free local port, uploads an image in headless Chromium, waits for the
drawing and writes a small PNG of the page.

    python -c "from denseclip.data import generate_synthetic_dataset as g; g('/tmp/shapes640', 1, 8, 640, seed=5)"
    python tools/web_demo_screenshot.py --config-file configs/Synthetic/mask_rcnn_denseclip_RN-tiny_FPN_shapes.yaml \
        --image /tmp/shapes640/val/000006.jpg --output docs/web_demo.png \
        --opts MODEL.WEIGHTS output/quickstart/model_final.pth
"""
import argparse
import os
import socket
import sys

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from headless_chromium import HeadlessChromium  # noqa: E402 - this folder, put on the path above

RESULT_SHOWN = ("(() => { const i = document.querySelector('#result img');"
                " return i && i.complete && i.naturalWidth > 0 && document.querySelector('#status').innerText.includes(' s · '); })()")


def main(argv=None) -> int:
    from denseclip.web_demo import app as web

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--image", required=True, help="the image to upload")
    parser.add_argument("--vocabulary", default=None)
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("--output", default="docs/web_demo.png")
    parser.add_argument("--width", type=int, default=1280, help="browser window width (CSS pixels)")
    parser.add_argument("--scale", type=float, default=0.75, help="the PNG's size relative to the page")
    parser.add_argument("--colors", type=int, default=128, help="palette size of the PNG (smaller file)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args(argv)

    vocabulary = [] if args.vocabulary is None else ["--vocabulary", args.vocabulary]
    web_args = web.get_parser().parse_args(["--config-file", args.config_file, "--cpu", *vocabulary, "--confidence-threshold",
                                            str(args.confidence_threshold), "--opts", *args.opts])
    session = web.create_session(web_args)
    examples = web.example_images(web_args.examples_dir)
    app = web.build_app(session, examples, vocabulary=args.vocabulary, threshold=args.confidence_threshold)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = web.launch(app, "127.0.0.1", port, allowed_paths=[web_args.examples_dir], block=False)
    try:
        with HeadlessChromium(width=args.width, height=900, timeout=120) as browser:
            browser.navigate(url)
            browser.wait_for("document.querySelector('#input-image input[type=file]') !== null")
            browser.set_input_files("#input-image input[type=file]", [args.image])
            browser.wait_for(RESULT_SHOWN)
            raw = args.output + ".full.png"
            browser.screenshot(raw)
    finally:
        app.close()
    page = Image.open(raw).convert("RGB")
    os.remove(raw)
    page = page.resize((round(page.width * args.scale), round(page.height * args.scale)), Image.LANCZOS)
    page.quantize(colors=args.colors, method=Image.Quantize.MEDIANCUT).save(args.output, optimize=True)
    print(f"{args.output}: {page.width} x {page.height} px, {os.path.getsize(args.output) / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
