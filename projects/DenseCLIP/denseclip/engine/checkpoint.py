"""Crash-safe checkpoints and strict, safe loading of model weights.

Detectron2/fvcore write checkpoints and the ``last_checkpoint`` pointer in place: a job killed while
saving (pre-emption, OOM killer, kill -9) leaves a truncated ``model_XXXX.pth`` that
``--resume`` then fails to load. Here every file is written to a temporary file in the same
directory, flushed, fsync'ed and atomically renamed over the target (``os.replace``), and the
pointer is only updated after the checkpoint itself is complete, so at any instant the directory
holds complete files and ``last_checkpoint`` names a complete one.

Saved checkpoints also record the model's vocabulary (``"vocabulary"``: the class names).

Loading differs from Detectron2 in these ways: a missing file is a ``FileNotFoundError`` naming it
(fvcore asserts, and silently trains from scratch for an empty path); ``.pth`` files are unpickled
with ``torch.load(weights_only=True)``, which cannot execute code from an untrusted file; the
authors' mmdetection checkpoints are converted on the fly; first-layout names are upgraded; the
per-class tensors of a checkpoint that records its vocabulary are matched to the model's class
names by name (any order, new names get a documented fallback); and other tensors whose shapes
differ from the model are an error unless MODEL.REINIT_VOCABULARY_MISMATCH asks to keep them
freshly initialised.
"""
from __future__ import annotations

import glob
import os
import pickle
import tempfile
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm
from fvcore.common.checkpoint import _strip_prefix_if_present
from torch.nn.parallel import DistributedDataParallel

from ..reference_checkpoint import (
    ReferenceLayout,
    convert_reference_state_dict,
    detect_reference_layout,
    is_reference_checkpoint,
    reference_names,
)
from ..reference_checkpoint_files import checkpoint_file_problem

__all__ = ["AtomicDetectionCheckpointer", "IncompatibleCheckpointError", "atomic_write", "checkpoint_vocabulary"]

_TMP_SUFFIX = ".tmp"
_LAST_CHECKPOINT = "last_checkpoint"


class IncompatibleCheckpointError(RuntimeError):
    """Checkpoint tensors whose shapes differ from the model's."""


def _fsync_dir(directory: str) -> None:
    """Persist a rename: without it a power loss can forget the new directory entry."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some platforms/filesystems
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Create or replace ``path`` with what ``write`` writes to a binary file, all or nothing.

    The temporary file lives in the target's directory so that ``os.replace`` is a same-filesystem
    atomic rename. On any exception the temporary file is removed and the old ``path`` is
    untouched; after a SIGKILL a hidden ``.<name>.*.tmp`` may remain, which the next
    :class:`AtomicDetectionCheckpointer` saving to that directory removes.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=_TMP_SUFFIX)
    try:
        # mkstemp creates the file 0600; give it the mode open() would (0666 minus the umask), so
        # that checkpoints stay readable by the group/others as fvcore's in-place saves were.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def _format_shapes(mismatches: Sequence[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]) -> str:
    return "\n".join(f"  {key}: checkpoint {tuple(ckpt)} vs model {tuple(model)}" for key, ckpt, model in mismatches)


def checkpoint_vocabulary(path: str) -> Optional[List[str]]:
    """The class names a checkpoint of this project (or a reference checkpoint) was trained with,
    or None when it records none."""
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, dict):
        return None
    names = loaded.get("vocabulary")
    if names is None and isinstance(loaded.get("meta"), dict):
        names = loaded["meta"].get("CLASSES")
    return list(names) if names else None


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic saves, existence checks, ``weights_only`` loading and
    an explicit policy for shape mismatches.

    Args:
        model, save_dir, save_to_disk, checkpointables: as for ``DetectionCheckpointer``.
        reinit_mismatched: when False (default), loading a checkpoint with tensors of another shape
            raises :class:`IncompatibleCheckpointError` listing them; when True
            (MODEL.REINIT_VOCABULARY_MISMATCH), everything else is loaded and those tensors keep
            their fresh initialisation, e.g. to fine-tune on a dataset with another vocabulary.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        save_dir: str = "",
        *,
        reinit_mismatched: bool = False,
        save_to_disk: Optional[bool] = None,
        **checkpointables: Any,
    ) -> None:
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.reinit_mismatched = reinit_mismatched
        self._loading: str = ""
        self._reference_layout: Optional[ReferenceLayout] = None  # of the reference checkpoint being loaded
        self._stale_checked = False

    def _remove_stale_temporaries(self) -> None:
        """Delete temporaries left by a writer that was killed mid-save (they may be GBs). Done at
        this checkpointer's first save, not at construction: an --eval-only job on the same
        directory must not delete the temporary a running training job is writing."""
        for tmp in glob.glob(os.path.join(glob.escape(self.save_dir), f".*{_TMP_SUFFIX}")):
            name = os.path.basename(tmp)
            if name.startswith(f".{_LAST_CHECKPOINT}.") or ".pth." in name:
                self.logger.info(f"Removing incomplete checkpoint temporary {tmp}")
                os.remove(tmp)

    # ------------------------------------------------------------------ saving
    def save(self, name: str, **kwargs: Any) -> None:
        """Same contents as fvcore's ``Checkpointer.save`` (model, checkpointables, ``kwargs``),
        written atomically, then ``last_checkpoint`` is pointed at it (also atomically)."""
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        model = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
        if hasattr(model, "class_names"):
            # The class names the per-class tensors belong to: loading matches them by name.
            data["vocabulary"] = list(model.class_names)
        data.update(kwargs)

        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        os.makedirs(self.save_dir, exist_ok=True)
        if not self._stale_checked:
            self._remove_stale_temporaries()
            self._stale_checked = True
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(
            os.path.join(self.save_dir, _LAST_CHECKPOINT),
            lambda f: f.write(last_filename_basename.encode("utf-8")),
        )

    # ------------------------------------------------------------------ loading
    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        """fvcore's ``load`` (an empty ``path`` still means "start from scratch"), but a ``path``
        that does not exist raises ``FileNotFoundError`` naming it, on every rank alike."""
        if path:
            try:
                local = self.path_manager.get_local_path(path)
            except Exception as e:  # e.g. a URL that cannot be downloaded
                raise FileNotFoundError(f"Cannot fetch checkpoint/weights '{path}': {e}") from e
            exists = os.path.isfile(local)
            if isinstance(self.model, DistributedDataParallel):
                # Detectron2 broadcasts from the main worker when only it can read the file.
                exists = comm.all_gather(exists)[0]
            if not exists:
                raise FileNotFoundError(
                    f"Checkpoint/weights file '{path}' does not exist (check MODEL.WEIGHTS, or the "
                    f"'{_LAST_CHECKPOINT}' file of the output directory when resuming)"
                )
        self._loading = path
        return super().load(path, checkpointables)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        """Detectron2's formats, with ``.pth``/``.pt`` read through ``weights_only=True``.

        ``weights_only`` cannot apply to Detectron2/Caffe2 model-zoo ``.pkl`` files: they are
        plain pickles (numpy arrays) and are read by Detectron2's own loader, so only load ``.pkl``
        files from sources you trust. ``.pyth`` (pycls) is also left to Detectron2.
        ``.safetensors`` files hold a bare state dict and never execute code.
        Checkpoints written by this project's ``Trainer`` (model, optimizer and scheduler states,
        iteration) contain only tensors, numbers, strings and containers, so they need no
        ``torch.serialization.add_safe_globals``.
        """
        if filename.endswith((".pkl", ".pyth")):
            return super()._load_file(filename)
        if filename.endswith(".safetensors"):
            from safetensors.torch import load_file

            return {"model": load_file(filename, device="cpu")}
        try:
            loaded = torch.load(filename, map_location=torch.device("cpu"), weights_only=True)
        except (pickle.UnpicklingError, EOFError, RuntimeError) as e:
            problem = checkpoint_file_problem(filename, e)
            if problem is not None:  # empty, truncated, not a checkpoint: e.g. an interrupted download
                raise IncompatibleCheckpointError(f"cannot read '{filename}': {problem}") from e
            raise RuntimeError(
                f"'{filename}' contains Python objects other than tensors and plain containers, "
                "which torch.load(weights_only=True) refuses to unpickle. Re-save only the state "
                "dict (torch.save({'model': model.state_dict()}, path), or for a reference mmdetection "
                "checkpoint torch.save({'state_dict': c['state_dict'], 'meta': {'CLASSES': c['meta']['CLASSES']}}, "
                "path)) with a trusted process."
            ) from e
        if not isinstance(loaded, dict):
            raise RuntimeError(f"'{filename}' does not hold a state dict (got {type(loaded).__name__})")
        if is_reference_checkpoint(loaded):
            # The authors' mmdetection checkpoint: converted to this project's names on the fly.
            self.logger.info(f"'{filename}' is a DenseCLIP reference (mmdetection) checkpoint: converting it")
            classes = loaded["meta"].get("CLASSES") if isinstance(loaded["meta"], dict) else None
            self._reference_layout = detect_reference_layout(loaded["state_dict"])
            converted: Dict[str, Any] = {"model": convert_reference_state_dict(loaded["state_dict"])}
            if classes:
                converted["vocabulary"] = list(classes)
            return converted
        return loaded if "model" in loaded else {"model": loaded}

    def _load_model(self, checkpoint: Any) -> Any:
        state = checkpoint.get("model") or {}
        _strip_prefix_if_present(state, "module.")
        # Before fvcore compares shapes by name, the model makes the checkpoint fit (first-layout
        # names; per-class tensors of a checkpoint that records its vocabulary follow the model's, by name).
        model = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
        vocabulary = checkpoint.get("vocabulary")
        if hasattr(model, "adapt_checkpoint"):
            new = model.adapt_checkpoint(state, vocabulary, fresh_new_classes=self.reinit_mismatched)
            if vocabulary and list(vocabulary) != model.class_names:
                self.logger.info(
                    f"'{self._loading}' was trained on {len(vocabulary)} classes; matched by name to the model's "
                    f"{len(model.class_names)}" + (
                        f"; {len(new)} new name(s) ({', '.join(new[:5])}{', ...' if len(new) > 5 else ''}) get "
                        + ("fresh weights (MODEL.REINIT_VOCABULARY_MISMATCH)" if self.reinit_mismatched
                           else "the mean of the trained classes' weights") if new else "")
                )
        num_tensors = len(state)
        incompatible = super()._load_model(checkpoint)
        mismatched = incompatible.incorrect_shapes
        model_keys = list(self.model.state_dict())
        if model_keys and not mismatched and len(incompatible.unexpected_keys) == num_tensors:
            # fvcore only logs missing/unexpected keys: a file of another architecture (e.g. CLIP
            # weights given as MODEL.WEIGHTS) would silently leave the whole model random.
            unexpected = sorted(incompatible.unexpected_keys)
            raise IncompatibleCheckpointError(
                f"'{self._loading}' shares no tensor name with the model: it is not a checkpoint of "
                f"this architecture. Checkpoint keys ({len(unexpected)}): {', '.join(unexpected[:8]) or '(none)'}"
                f"{', ...' if len(unexpected) > 8 else ''}; model keys ({len(model_keys)}): "
                f"{', '.join(model_keys[:8])}{', ...' if len(model_keys) > 8 else ''}. "
                "CLIP weights belong in MODEL.CLIP.PRETRAINED, not MODEL.WEIGHTS."
            )
        if mismatched and not self.reinit_mismatched:
            raise IncompatibleCheckpointError(
                f"'{self._loading}' does not fit the model: {len(mismatched)} tensor(s) have other "
                f"shapes (usually another number of classes / vocabulary):\n{_format_shapes(mismatched)}\n"
                "Set MODEL.REINIT_VOCABULARY_MISMATCH True to load all other weights and keep these "
                "freshly initialised."
            )
        self._check_reference_complete(incompatible.missing_keys, {key for key, _, _ in mismatched})
        if mismatched:
            self.logger.warning(
                f"MODEL.REINIT_VOCABULARY_MISMATCH: kept {len(mismatched)} freshly initialised "
                f"tensor(s) instead of those of '{self._loading}':\n{_format_shapes(mismatched)}"
            )
        return incompatible

    def _check_reference_complete(self, missing_keys: Sequence[str], mismatched: Any) -> None:
        """An authors' checkpoint holds every tensor of its model: one it lacks (that the model's
        layout maps to a reference name) would stay random with only fvcore's log warning."""
        layout, self._reference_layout = self._reference_layout, None
        if layout is None:
            return
        lacking = reference_names([k for k in missing_keys if k not in mismatched], layout)
        if lacking:
            names = list(lacking.values())
            raise IncompatibleCheckpointError(
                f"'{self._loading}' is an authors' checkpoint that lacks {len(names)} tensor(s) of the model: "
                f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''}; they would stay random. Download the "
                "checkpoint again (tools/convert_reference_checkpoint.py checks a file without loading it)"
            )
