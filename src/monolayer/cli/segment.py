"""``monolayer segment``: images to binary masks, score maps and confluence records."""

from __future__ import annotations

import enum
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from monolayer.backends import BACKENDS, create_backend
from monolayer.backends.classical import METHODS
from monolayer.cli.common import (
    BATCH, HARDWARE, INPUT, MODEL, OUTPUT, Tally, cli_errors, finish, progress, say_error, say_warning,
    write_records,
)
from monolayer.commands.segment import SegmentOptions, in_shard, parse_shard, plan_jobs
from monolayer.executors import EXECUTORS, Executor, Recipe, check_executor, run_segment
from monolayer.io.atomic import ensure_folder, present
from monolayer.io.journal import Journal, output_lock
from monolayer.io.provenance import claim_folder, noting_outputs
from monolayer.devices import DEVICES, PRECISIONS
from monolayer.errors import NoInputError, UsageError
from monolayer.io.inputs import expand_inputs

ModelName = enum.Enum("ModelName", {name: name for name in BACKENDS}, type=str)
Method = enum.Enum("Method", {name: name for name in METHODS}, type=str)
Mode = enum.Enum("Mode", {name: name for name in ("promptless", "auto")}, type=str)
Device = enum.Enum("Device", {name: name for name in DEVICES}, type=str)
Precision = enum.Enum("Precision", {name: name for name in PRECISIONS}, type=str)
ExecutorName = enum.Enum("ExecutorName", {name: name for name in EXECUTORS}, type=str)

# Which models take which option: anything else is a usage error, never silently ignored.
OWNERS = {
    "method": ("classical",), "mode": ("sam",), "tile": ("sam",), "points_per_side": ("sam",),
    "diameter": ("cellpose",), "truth": ("cellpose",), "flow_threshold": ("cellpose",),
    "cellprob_threshold": ("cellpose",), "thresholds_file": ("cellpose",),
    "score_threshold": ("maskrcnn",), "threshold": ("sam", "unet", "maskrcnn"),
    "weights": ("sam", "cellpose", "maskrcnn", "unet"), "device": ("sam", "cellpose", "maskrcnn", "unet"),
    "precision": ("sam", "cellpose", "maskrcnn", "unet"), "seed": ("sam", "cellpose", "maskrcnn", "unet"),
    "batch_size": ("sam", "cellpose", "maskrcnn", "unet"),
}
RUNTIME = ("weights", "device", "precision", "seed", "batch_size")


def backend_options(model: str, given: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for the backend from the options the user actually gave."""
    given = {k: v for k, v in given.items() if v is not None}
    for option, value in given.items():
        if model not in OWNERS[option]:
            flag = "--" + ("thresholds" if option == "thresholds_file" else option.replace("_", "-"))
            raise UsageError(f"{flag} does not apply to --model {model}",
                             f"it applies to: {', '.join(OWNERS[option])}")
    if model == "classical":
        return given
    from monolayer.backends._torch import RuntimeOptions

    runtime = RuntimeOptions(**{k: given.pop(k) for k in RUNTIME if k in given})
    if "diameter" in given:
        given["diameter"] = _diameter(given.pop("diameter"), given.pop("truth", None))
    elif "truth" in given:
        raise UsageError("--truth goes with --diameter auto")
    return {"runtime": runtime, **given}


def portable(options: dict[str, Any]) -> dict[str, Any]:
    """Backend options with file paths made absolute, for workers whose working folder
    is not ours (Dask). A published checkpoint's name stays a name."""
    import dataclasses

    options = dict(options)
    runtime = options.get("runtime")
    if runtime is not None and runtime.weights and Path(runtime.weights).expanduser().is_file():
        options["runtime"] = dataclasses.replace(runtime, weights=str(Path(runtime.weights).expanduser().resolve()))
    if options.get("thresholds_file") is not None:
        options["thresholds_file"] = Path(options["thresholds_file"]).resolve()
    return options


def run_fingerprint(described: dict[str, Any], options: SegmentOptions) -> dict[str, Any]:
    """What determines segment's output files: model, method, parameters, weights (by
    checksum) and the reading options. Batch size, paths and --save-prob do not."""
    params = {k: v for k, v in (described.get("params") or {}).items() if k != "batch_size"}
    return {"model": described.get("model"), "method": described.get("method"), "params": params,
            "weights_sha256": described.get("weights_sha256"), "page": options.page,
            "resize": options.resize}


def _diameter(value: str, truth: list[Path] | None) -> float:
    if value == "auto":
        if not truth:
            raise UsageError("--diameter auto needs --truth (labelled masks to measure)")
        from monolayer.commands.segment import diameter_from_truth

        return diameter_from_truth(truth)
    try:
        diameter = float(value)
    except ValueError:
        raise UsageError(f"--diameter {value!r}: give pixels or 'auto'") from None
    if diameter <= 0:
        raise UsageError("--diameter must be positive")
    return diameter


@cli_errors
def segment(
    inputs: Annotated[list[str], typer.Argument(
        help="Images, folders, quoted glob patterns, or - for JSON Lines (an 'image' field "
        "per record) or plain paths on stdin.", show_default=False, metavar="INPUT...")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for masks (created if needed).",
                                      rich_help_panel=OUTPUT, show_default=False)],
    model: Annotated[ModelName, typer.Option(
        "--model", "-m", help="Segmentation backend ('monolayer models' lists them).",
        rich_help_panel=MODEL)] = ModelName.classical,
    method: Annotated[Method | None, typer.Option(
        "--method", help="classical: phase (local-contrast thresholding for phase contrast, the "
        "default) or canny (the paper's baseline).", rich_help_panel=MODEL, show_default=False)] = None,
    weights: Annotated[str | None, typer.Option(
        "--weights", "-w", help="Checkpoint file, or the name of a published checkpoint already "
        "fetched into the cache (see 'monolayer models').", rich_help_panel=MODEL,
        show_default=False)] = None,
    mode: Annotated[Mode | None, typer.Option(
        "--mode", help="sam: promptless (the paper: no prompts, one mask; default) or auto "
        "(automatic mask generator, background masks rejected).", rich_help_panel=MODEL,
        show_default=False)] = None,
    threshold: Annotated[float | None, typer.Option(
        "--threshold", help="sam, unet, maskrcnn: absolute probability threshold for the mask "
        "[default: 0.5].", rich_help_panel=MODEL, show_default=False)] = None,
    tile: Annotated[int | None, typer.Option(
        "--tile", help="sam: process images larger than this many pixels in overlapping tiles.",
        rich_help_panel=MODEL, show_default=False)] = None,
    points_per_side: Annotated[int | None, typer.Option(
        "--points-per-side", help="sam --mode auto: grid of point prompts per side [default: 32].",
        rich_help_panel=MODEL, show_default=False)] = None,
    diameter: Annotated[str | None, typer.Option(
        "--diameter", help="cellpose: mean cell diameter in pixels, or 'auto' to measure it on "
        "the labelled masks given with --truth.", rich_help_panel=MODEL, show_default=False)] = None,
    truth: Annotated[list[Path] | None, typer.Option(
        "--truth", help="cellpose --diameter auto: labelled instance masks (coco2mask JSON Lines "
        "or a mask folder).", rich_help_panel=MODEL, show_default=False)] = None,
    flow_threshold: Annotated[float | None, typer.Option(
        "--flow-threshold", help="cellpose: flow error threshold [default: 0.4].",
        rich_help_panel=MODEL, show_default=False)] = None,
    cellprob_threshold: Annotated[float | None, typer.Option(
        "--cellprob-threshold", help="cellpose: cell probability threshold, in logits [default: 0].",
        rich_help_panel=MODEL, show_default=False)] = None,
    thresholds_file: Annotated[Path | None, typer.Option(
        "--thresholds", help="cellpose: JSON file of tuned thresholds, as written by "
        "'monolayer cellpose-thresholds'.", rich_help_panel=MODEL, show_default=False)] = None,
    score_threshold: Annotated[float | None, typer.Option(
        "--score-threshold", help="maskrcnn: keep instances with at least this confidence "
        "[default: 0.5].", rich_help_panel=MODEL, show_default=False)] = None,
    device: Annotated[Device | None, typer.Option(
        "--device", help="Learned models: where to run; an unavailable device is an error "
        "[default: auto].", rich_help_panel=HARDWARE, show_default=False)] = None,
    precision: Annotated[Precision | None, typer.Option(
        "--precision", help="Learned models: fp32, or bf16 for the heavy encoders where the "
        "hardware supports it [default: fp32].", rich_help_panel=HARDWARE, show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, help="Learned models: images per forward pass [default: 1].",
        rich_help_panel=HARDWARE, show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(
        "--seed", help="Learned models: random seed [default: 0].", rich_help_panel=HARDWARE,
        show_default=False)] = None,
    save_prob: Annotated[bool, typer.Option(
        "--save-prob", help="Also write the float32 probability/score map, STEM.prob.tif.",
        rich_help_panel=OUTPUT)] = False,
    page: Annotated[int, typer.Option("--page", min=0, help="Page of multi-page TIFFs to read.",
                                      rich_help_panel=INPUT)] = 0,
    resize: Annotated[int | None, typer.Option(
        "--resize", min=16, help="Give the model images scaled so the longest side is this many "
        "pixels (use the value the model was trained with); masks are scaled back, so confluence "
        "is still over the original image.", rich_help_panel=INPUT, show_default=False)] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Look for images in "
                                            "sub-folders of folder inputs.", rich_help_panel=INPUT)] = False,
    skip_existing: Annotated[bool, typer.Option(
        "--skip-existing", help="Reuse results already in OUT for the same image content, model, "
        "weights and parameters (keyed on checksums, not names); their records are still printed, "
        "marked \"reused\": true, so '> pred.jsonl' after an interrupted run is complete.",
        rich_help_panel=BATCH)] = False,
    wait: Annotated[bool, typer.Option(
        "--wait", help="If another run is writing to OUT, wait for it instead of exiting 75.",
        rich_help_panel=BATCH)] = False,
    fail_fast: Annotated[bool, typer.Option(
        "--fail-fast", help="Stop at the first image that fails (default: record the error, go on, "
        "exit 1 at the end).", rich_help_panel=BATCH)] = False,
    jobs: Annotated[int, typer.Option(
        "--jobs", "-j", min=1, help="Local worker processes; each loads the model once. Image "
        "decoding and mask writing run alongside model work.", rich_help_panel=BATCH)] = 1,
    shard: Annotated[str | None, typer.Option(
        "--shard", help="I/N: process only the I-th of N deterministic shards of the input list "
        "(for SLURM array jobs: --shard $SLURM_ARRAY_TASK_ID/N with --array=1-N).",
        rich_help_panel=BATCH, show_default=False)] = None,
    executor: Annotated[ExecutorName, typer.Option(
        "--executor", help="local (this machine, --jobs processes) or dask (a running Dask "
        "cluster; OUT and the images must be on a file system the workers share).",
        rich_help_panel=BATCH)] = ExecutorName.local,
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", help="--executor dask: the scheduler's address, e.g. tcp://head:8786.",
        rich_help_panel=BATCH, show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="OUT holds another run's outputs (other model, parameters or weights): "
        "delete them first, instead of refusing. A rerun with the same settings needs no flag.",
        rich_help_panel=OUTPUT)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary on stderr.",
                                        rich_help_panel=OUTPUT)] = False,
) -> None:
    """Segment images and report their confluence.

    Writes OUT/STEM.mask.tif (uint8 0/1) per image and prints one JSON record per
    image: image, image_sha256, mask, confluence (foreground / original image
    area), model, method, params, weights_sha256, seconds. The model is loaded
    once per run. An image that cannot be read gives an error record and a line
    on stderr; the others are still processed, and the exit code is 1 at the end.

    Safe for cron: a lock lets one run at a time write to OUT (a second exits 75,
    or queues with --wait); masks are written atomically and each finished result
    is journaled in OUT/.monolayer, so after a crash or kill, rerunning with
    --skip-existing computes only what is missing. Ctrl-C exits 130 with every
    finished record intact.

    Example: monolayer segment images/ --model sam --weights sam_vit_b --out pred/ > pred.jsonl

    Example (nightly): monolayer segment /data/today --out /data/masks --skip-existing > today.jsonl
    """
    if present(out) and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    given = {"method": method, "weights": weights, "mode": mode, "threshold": threshold, "tile": tile,
             "points_per_side": points_per_side, "diameter": diameter, "truth": truth,
             "flow_threshold": flow_threshold, "cellprob_threshold": cellprob_threshold,
             "thresholds_file": thresholds_file, "score_threshold": score_threshold,
             "device": device, "precision": precision, "batch_size": batch_size, "seed": seed}
    given = {k: v.value if isinstance(v, enum.Enum) else v for k, v in given.items()}
    options = backend_options(model.value, given)
    shard_spec = parse_shard(shard) if shard is not None else None
    check_executor(executor.value, jobs, scheduler)
    started = time.perf_counter()
    jobs_list = plan_jobs(expand_inputs(inputs, recursive=recursive, exclude=out))
    if not jobs_list:
        raise NoInputError("no input images", "name image files or folders, or - for stdin")
    if shard_spec is not None:
        jobs_list = [job for job in jobs_list if in_shard(job, shard_spec)]
    ensure_folder(out)
    seg_options = SegmentOptions(out=out, save_prob=save_prob, page=page, resize=resize,
                                 root=str(out.resolve()))
    tally = Tally()
    # The lock first: a run that must wait or give way has loaded no model for nothing.
    with output_lock(out, wait=wait, on_wait=None if quiet else lambda holder: say_warning(
            f"another run ({holder}) is writing to {out}; waiting for it")):
        backend = create_backend(model.value, **options)
        if save_prob and backend.score_kind is None:
            say_warning("--save-prob: this method produces no score map; only masks are written")
        described = backend.describe()
        removed = claim_folder(out, "segment", run_fingerprint(described, seg_options), overwrite=overwrite)
        if removed and not quiet:
            say_warning(f"--overwrite: deleted {removed} file(s) of the previous run in {out}")
        journal = Journal(out, "segment")
        pool = Executor(executor.value, jobs=jobs, scheduler=scheduler,
                        recipe=Recipe(model.value, portable(options)), backend=backend)
        failed = False
        reused = 0
        try:
            with progress(len(jobs_list), "segment", quiet) as bar:
                task = bar.add_task("segment", total=len(jobs_list))
                records = run_segment(jobs_list, pool, seg_options, described, chunk_size=backend.batch_size,
                                      journal=journal, skip_existing=skip_existing)
                for record in write_records(noting_outputs(out, records, ("mask", "prob")), tally):
                    bar.advance(task)
                    reused += bool(record.get("reused"))
                    if fail_fast and "error" in record:
                        failed = True
                        break
        except BaseException:
            pool.close(cancel=True)
            raise
        finally:
            journal.close()
        pool.close(cancel=failed)
    if failed and not quiet:
        say_error("--fail-fast: stopped at the first failure; rerun with --skip-existing to go on")
    finish(tally, "segment", quiet, time.perf_counter() - started,
           note=f"{reused} reused" if skip_existing else None)
