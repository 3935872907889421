"""Model weights: where they come from, how they are checked, how they are loaded.

Nothing is ever downloaded implicitly. Weights come from

1. an explicit path (``--weights FILE``), or
2. the name of a published checkpoint (``--weights sam_vit_b``) that is already in
   the cache folder: ``$MONOLAYER_CACHE``, else ``$XDG_CACHE_HOME/monolayer``,
   else ``~/.cache/monolayer``. ``monolayer models fetch NAME`` puts it there,
   verifying its SHA-256, and fails fast (exit 69) when offline.

Loading uses ``torch.load(..., weights_only=True)``: a pickle that would run code
is refused. This module imports no framework at import time.
"""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monolayer.errors import DataError, NoInputError, UnavailableError
from monolayer.io.atomic import atomic_path
from monolayer.io.images import sha256_file

CACHE_ENV = "MONOLAYER_CACHE"


def cache_dir() -> Path:
    """The folder where fetched checkpoints live (not created here)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "monolayer"


@dataclass(frozen=True)
class Checkpoint:
    """A published checkpoint monolayer knows by name."""

    name: str
    backend: str
    variant: str
    url: str
    sha256: str
    size: int | None
    description: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def cached_path(self) -> Path:
        return cache_dir() / self.filename


_SAM = "https://dl.fbaipublicfiles.com/segment_anything/"
PUBLISHED: dict[str, Checkpoint] = {
    c.name: c for c in (
        Checkpoint("sam_vit_b", "sam", "vit_b", _SAM + "sam_vit_b_01ec64.pth",
                   "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375042383,
                   "Segment Anything ViT-B (Meta, Apache-2.0); the paper's zero-shot model family"),
        Checkpoint("sam_vit_l", "sam", "vit_l", _SAM + "sam_vit_l_0b3195.pth",
                   "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1249524607,
                   "Segment Anything ViT-L (Meta, Apache-2.0)"),
        Checkpoint("sam_vit_h", "sam", "vit_h", _SAM + "sam_vit_h_4b8939.pth",
                   "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2564550879,
                   "Segment Anything ViT-H (Meta, Apache-2.0)"),
    )
}


# Cellpose 3 built-in model types. Their files are looked up in cellpose's own model
# folder, never downloaded (cellpose itself would download a missing one).
CELLPOSE_MODEL_TYPES = ("cyto3", "cyto2", "cyto", "nuclei", "cyto2_cp3", "tissuenet_cp3",
                        "livecell_cp3", "yeast_PhC_cp3", "yeast_BF_cp3", "bact_phase_cp3",
                        "bact_fluor_cp3", "deepbacs_cp3")


def cellpose_model_file(model_type: str) -> Path:
    """Where cellpose 3 keeps the file of a built-in model type ($CELLPOSE_LOCAL_MODELS_PATH
    or ~/.cellpose/models; cyto, cyto2 and nuclei carry a 'torch_0' suffix)."""
    folder = Path(os.environ.get("CELLPOSE_LOCAL_MODELS_PATH") or Path.home() / ".cellpose" / "models")
    suffix = "torch_0" if model_type in ("cyto", "cyto2", "nuclei") else ""
    return folder / f"{model_type}{suffix}"


@dataclass(frozen=True)
class Weights:
    """A resolved weights file and its checksum."""

    path: Path
    sha256: str
    name: str | None = None


def resolve(spec: str | None, backend: str) -> Weights:
    """Turn ``--weights`` into a file; errors name what to do instead."""
    if not spec:
        known = [c.name for c in PUBLISHED.values() if c.backend == backend]
        hint = (f"give a checkpoint file, or one of {', '.join(known)} after "
                f"'monolayer models fetch NAME'") if known else "give a checkpoint file"
        raise UnavailableError(f"model {backend!r} needs --weights", hint)
    path = Path(spec).expanduser()
    if path.is_file():
        return Weights(path=path, sha256=sha256_file(path))
    if backend == "cellpose" and spec in CELLPOSE_MODEL_TYPES:
        file = cellpose_model_file(spec)
        if not file.is_file():
            raise UnavailableError(f"cellpose model type {spec!r} is not on this machine ({file})",
                                   "monolayer never downloads it: copy the file there from a "
                                   "cellpose installation, or pass --weights FILE")
        return Weights(path=file, sha256=sha256_file(file), name=spec)
    published = PUBLISHED.get(spec)
    if published is not None:
        if published.backend != backend:
            raise UnavailableError(f"{spec} is a {published.backend} checkpoint, not {backend}")
        cached = published.cached_path()
        if not cached.is_file():
            raise UnavailableError(f"checkpoint {spec} is not in the cache ({cached})",
                                   f"run 'monolayer models fetch {spec}' or pass --weights FILE")
        # Hashed like any file: a truncated or replaced cache file must not borrow the
        # published checksum (records, and --skip-existing keys, carry it).
        actual = sha256_file(cached)
        if actual != published.sha256:
            raise UnavailableError(f"cached {spec} ({cached}) has SHA-256 {actual[:12]}..., not the "
                                   f"published {published.sha256[:12]}...",
                                   f"run 'monolayer models fetch {spec} --force', or pass --weights FILE")
        return Weights(path=cached, sha256=actual, name=spec)
    if path.exists():
        raise NoInputError(f"--weights {spec} is not a file")
    raise NoInputError(f"no such weights file: {spec}",
                       "see 'monolayer models' for published checkpoints")


def load_state_dict(path: Path) -> dict[str, Any]:
    """A plain tensor state dict from a checkpoint, loaded without running any pickle code.

    Accepts the bare state dict and the usual wrappers (``{"state_dict": ...}``,
    ``{"model": ...}``).
    """
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: refused to load: not a plain tensor checkpoint "
                        f"({str(exc).splitlines()[0][:160]})",
                        "monolayer loads weights with torch.load(weights_only=True); "
                        "re-save the model's state_dict()") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read checkpoint ({str(exc).splitlines()[0][:160]})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise DataError(f"{path}: checkpoint is not a state dict")
    return obj


def strip_data_parallel(state: dict[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` prefix a model saved from ``nn.DataParallel`` carries."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def load_strict(model: Any, state: dict[str, Any], where: str, what: str, hint: str | None = None) -> Any:
    """Load ``state`` into ``model`` requiring every key and shape to fit.

    A ``module.`` prefix (a model saved from ``nn.DataParallel``) is removed first;
    a mismatch is a :class:`DataError` naming the first differences.
    """
    try:
        model.load_state_dict(strip_data_parallel(state), strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else lines[0] if lines else ""
        raise DataError(f"{where}: weights do not fit {what} ({detail[:300]})", hint) from None
    return model


def fetch(name: str, timeout: float = 10.0, force: bool = False) -> Path:
    """Download a published checkpoint into the cache, verifying its SHA-256.

    Fails within about ``timeout`` seconds when the address cannot be reached,
    with exit code 69. A file that arrives with the wrong checksum is deleted.
    """
    published = PUBLISHED.get(name)
    if published is None:
        raise NoInputError(f"unknown checkpoint {name!r}", f"choose one of: {', '.join(PUBLISHED)}")
    target = published.cached_path()
    if target.is_file() and not force:
        if sha256_file(target) == published.sha256:
            return target
        raise DataError(f"{target} exists but its SHA-256 does not match {name}",
                        "delete it, or fetch again with --force")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(published.url, timeout=timeout) as response, \
                atomic_path(target) as tmp, open(tmp, "wb") as out:
            while block := response.read(1 << 20):
                digest.update(block)
                out.write(block)
            out.flush()
            if digest.hexdigest() != published.sha256:
                raise DataError(f"download of {name} has SHA-256 {digest.hexdigest()}, "
                                f"expected {published.sha256}; nothing was kept",
                                "try again; if it persists the file at the address has changed")
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UnavailableError(f"cannot download {name} from {published.url} ({reason})",
                               f"offline? copy the file to {target} by other means, or pass --weights FILE") from None
    return target


def inventory() -> list[dict[str, Any]]:
    """One entry per published checkpoint: what it is and whether it is cached here."""
    rows = []
    for c in PUBLISHED.values():
        cached = c.cached_path()
        rows.append({"name": c.name, "backend": c.backend, "variant": c.variant, "url": c.url,
                     "sha256": c.sha256, "size": c.size, "description": c.description,
                     "cached": cached.is_file(), "path": str(cached)})
    return rows
