"""The local web demo (``python demo.py --web``): :mod:`.session` serves one request without the
web (image checks, vocabulary, predictions, drawings); :mod:`.app` is the Gradio page and its
command line. Gradio is an optional dependency (the ``web`` extra): only :mod:`.app` imports it."""
from .session import DRAWINGS, WebDemoInputError, WebDemoResult, WebDemoSession

__all__ = ["DRAWINGS", "WebDemoInputError", "WebDemoResult", "WebDemoSession"]
