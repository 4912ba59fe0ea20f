"""The demo's files: the image paths of ``--input`` (files, folders, glob patterns), the names of
the drawings and score maps written under ``--output``, and why an input could not be read."""
from __future__ import annotations

import glob
import logging
import os
import re
from typing import Dict, List, Sequence, Tuple

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v")


class DemoError(RuntimeError):
    """A demo run that cannot go on (camera, video, output or window); demo.py prints it."""


def expand_inputs(inputs: Sequence[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Image paths of ``inputs`` (files, folders: their images, glob patterns), sorted and without
    duplicates, and ``(input, reason)`` for those that name nothing."""
    paths: Dict[str, str] = {}
    missing: List[Tuple[str, str]] = []
    for spec in inputs:
        if os.path.isdir(spec):
            found = [os.path.join(spec, f) for f in os.listdir(spec) if f.lower().endswith(IMAGE_EXTENSIONS)]
            found = [f for f in found if os.path.isfile(f)]
            if not found:
                missing.append((spec, f"folder has no image files ({', '.join(IMAGE_EXTENSIONS)})"))
        elif os.path.isfile(spec):
            found = [spec]
        elif glob.has_magic(spec):
            found = [f for f in glob.glob(spec, recursive=True) if os.path.isfile(f)]
            if not found:
                missing.append((spec, "no file matches this pattern"))
        else:
            missing.append((spec, "no such file or directory"))
            continue
        for f in found:
            paths.setdefault(os.path.realpath(f), os.path.normpath(f))
    return sorted(set(paths.values())), missing


def sanitize_file_name(name: str) -> str:
    """A class name usable in a file name: runs of characters other than letters, digits, '.', '-'
    and '_' become '_' ("remote control" -> "remote_control")."""
    cleaned = re.sub(r"[^0-9A-Za-z._-]+", "_", name).strip("._")
    return cleaned or "class"


def _output_stems(paths: Sequence[str]) -> List[str]:
    """File stems for the outputs, made unique ("a", "a_1") when two inputs share a name."""
    used: Dict[str, int] = {}
    stems = []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in used:
            used[stem] += 1
            unique = f"{stem}_{used[stem]}"
            while unique in used:
                used[stem] += 1
                unique = f"{stem}_{used[stem]}"
            logger.info("'%s' has the name of an earlier input: writing it as %s.jpg", path, unique)
            stem = unique
        used.setdefault(stem, 0)
        stems.append(stem)
    return stems


def score_map_names(names: Sequence[str]) -> List[str]:
    """Sanitised, unique file-name parts for class names."""
    out, seen = [], set()
    for name in names:
        base = candidate = sanitize_file_name(name)
        n = 1
        while candidate in seen:
            n += 1
            candidate = f"{base}_{n}"
        seen.add(candidate)
        out.append(candidate)
    return out


def image_output_files(output: str, paths: Sequence[str]) -> List[Tuple[str, str, str]]:
    """``(folder, stem, extension)`` of the drawing of each image. ``output`` is the one file to
    write when it ends with an image extension and is not a folder (then there must be one image;
    Detectron2's demo convention), else the folder for ``<stem>.jpg`` files."""
    if output.lower().endswith(IMAGE_EXTENSIONS) and not os.path.isdir(output):
        if len(paths) != 1:
            raise DemoError(f"--output '{output}' names an image file, but there are {len(paths)} input images: "
                            "give a folder for several images")
        stem, extension = os.path.splitext(os.path.basename(output))
        return [(os.path.dirname(output) or ".", stem, extension)]
    return [(output, stem, ".jpg") for stem in _output_stems(paths)]


def video_output_file(output: str, source_name: str) -> str:
    """The video file to write: ``output`` itself when it has a video extension, else
    ``<output>/<source_name>.mp4`` (the folder is created)."""
    if output.lower().endswith(IMAGE_EXTENSIONS):
        raise DemoError(f"--output '{output}' names an image file: for a video give a video file "
                        f"({', '.join(VIDEO_EXTENSIONS)}) or a folder")
    if output.lower().endswith(VIDEO_EXTENSIONS) and not os.path.isdir(output):
        path = output
    else:
        path = os.path.join(output, source_name + ".mp4")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return path


def read_failure_reason(path: str, error: Exception) -> str:
    """Why ``read_image`` failed on ``path``, in words."""
    if not os.path.exists(path):
        return "no such file or directory"
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return "the file is empty (0 bytes)"
    if type(error).__name__ == "UnidentifiedImageError":
        return "not an image file (its content is in no image format PIL can read)"
    if isinstance(error, OSError) and error.strerror:
        return f"cannot read it ({error.strerror})"
    return f"cannot read it as an image ({type(error).__name__}: {error})"
