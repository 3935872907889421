"""A resumable epoch loop.

After every epoch the loop saves, atomically, the model's weights to ``--out``
(a plain state dict that ``segment --weights`` loads) and a training state beside
it (``OUT.state``: epoch, optimiser, random-generator states, the log so far).
Run the same command again after an interruption and it continues after the last
saved epoch, first re-emitting the log records of the epochs already done, so a
``> log.jsonl`` redirect ends up with every epoch exactly once.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monolayer.errors import DataError, UsageError
from monolayer.io.atomic import write_atomic
from monolayer.records import new_record


def state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state")


STATE_FIELDS = {"config": dict, "epoch": int, "model": dict, "optimizer": dict, "numpy_rng": dict, "log": list}


def check_state(state: Any, where: Path) -> None:
    """Refuse a training state that is not what :func:`run_epochs` saves (exit 65, not a crash)."""
    if not isinstance(state, dict):
        raise DataError(f"{where}: not a monolayer training state", "delete it or pass --restart")
    for name, kind in STATE_FIELDS.items():
        if not isinstance(state.get(name), kind) or isinstance(state.get(name), bool):
            raise DataError(f"{where}: training state field {name!r} is missing or not a {kind.__name__}",
                            "delete it or pass --restart")
    if state["epoch"] < 1 or not isinstance(state.get("torch_rng"), torch.Tensor) or not all(
            isinstance(r, dict) and r.get("epoch") == i for i, r in enumerate(state["log"], start=1)) \
            or len(state["log"]) != state["epoch"]:
        raise DataError(f"{where}: training state is inconsistent (epoch, log or random state)",
                        "delete it or pass --restart")


def _save_torch(target: Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(target, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def run_epochs(*, model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: dict[str, Any],
               epochs: int, out: Path, rng: np.random.Generator,
               train_epoch: Callable[[], float], validate: Callable[[], dict[str, float]] | None,
               emit: Callable[[dict[str, Any]], None], restart: bool = False,
               before_epoch: Callable[[int], None] | None = None) -> None:
    """Train until ``epochs`` are done, resuming from ``OUT.state`` when it matches ``config``."""
    state_file = state_path(out)
    log: list[dict[str, Any]] = []
    start = 1
    if state_file.exists() and not restart:
        try:
            state = torch.load(state_file, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DataError(f"{state_file}: unreadable training state ({exc})",
                            "delete it or pass --restart") from None
        check_state(state, state_file)
        if state.get("config") != config:
            raise UsageError(f"{state_file} belongs to a different training configuration",
                             "use the same options to resume, or --restart to start over")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["torch_rng"])
            if state.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            rng.bit_generator.state = state["numpy_rng"]
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{state_file}: training state does not fit this model "
                            f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})",
                            "delete it or pass --restart") from None
        log = list(state["log"])
        start = int(state["epoch"]) + 1
        for record in log:
            emit(record)
    for epoch in range(start, epochs + 1):
        started = time.perf_counter()
        if before_epoch is not None:
            before_epoch(epoch)
        model.train()
        loss = train_epoch()
        metrics = {}
        if validate is not None:
            model.eval()
            metrics = validate()
        record = new_record("train", model=config["model"], epoch=epoch, epochs=epochs, loss=loss,
                            **metrics, seconds=round(time.perf_counter() - started, 3))
        log.append(record)
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        _save_torch(out, weights)
        _save_torch(state_file, {"config": config, "epoch": epoch, "model": weights,
                                 "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                                 "numpy_rng": rng.bit_generator.state, "log": log})
        emit(record)
