"""``monolayer segment``: images to binary masks, score maps and confluence records."""

from __future__ import annotations

import enum
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from monolayer.backends import BACKENDS, create_backend
from monolayer.backends._spec import NORMALIZATIONS
from monolayer.cli.backend_options import describe_setup, setup_model, with_backend_options
from monolayer.cli.common import (
    BATCH, INPUT, MODEL, OUTPUT, Tally, cli_errors, finish, progress, say_error, say_warning,
    write_records,
)
from monolayer.commands.segment import SegmentOptions, in_shard, parse_shard, plan_jobs
from monolayer.executors import EXECUTORS, Executor, Recipe, check_executor, run_segment
from monolayer.io.atomic import ensure_folder, present, remove_own_partials
from monolayer.io.journal import Journal, output_lock
from monolayer.io.provenance import OutputList, claim_folder
from monolayer.errors import NoInputError, UsageError
from monolayer.io.inputs import expand_inputs

ModelName = enum.Enum("ModelName", {name: name for name in BACKENDS}, type=str)
Normalize = enum.Enum("Normalize", {name: name for name in NORMALIZATIONS}, type=str)
ExecutorName = enum.Enum("ExecutorName", {name: name for name in EXECUTORS}, type=str)


def portable(options: dict[str, Any]) -> dict[str, Any]:
    """Backend options with file paths made absolute, for workers whose working folder
    is not ours (Dask). A published checkpoint's name stays a name."""
    import dataclasses

    options = dict(options)
    runtime = options.get("runtime")
    if runtime is not None and runtime.weights and Path(runtime.weights).expanduser().is_file():
        options["runtime"] = dataclasses.replace(runtime, weights=str(Path(runtime.weights).expanduser().resolve()))
    return options


def run_fingerprint(described: dict[str, Any], options: SegmentOptions) -> dict[str, Any]:
    """What determines segment's output files: model, method, parameters, weights (by
    checksum) and the reading options. Batch size, paths and --save-prob do not."""
    params = {k: v for k, v in (described.get("params") or {}).items() if k not in ("batch_size", "sources")}
    if isinstance(params.get("params_file"), dict):  # its values and checksum matter, not where it lies
        params["params_file"] = {k: v for k, v in params["params_file"].items() if k != "path"}
    return {"model": described.get("model"), "method": described.get("method"), "params": params,
            "weights_sha256": described.get("weights_sha256"), "page": options.page,
            "resize": options.resize}


@cli_errors
@with_backend_options("segment")
def segment(
    inputs: Annotated[list[str], typer.Argument(
        help="Images, folders, quoted glob patterns, or - for JSON Lines (an 'image' field "
        "per record) or plain paths on stdin.", show_default=False, metavar="INPUT...")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for masks (created if needed).",
                                      rich_help_panel=OUTPUT, show_default=False)],
    model: Annotated[ModelName, typer.Option(
        "--model", "-m", help="Segmentation backend ('monolayer models' lists them).",
        rich_help_panel=MODEL)] = ModelName.classical,
    save_prob: Annotated[bool, typer.Option(
        "--save-prob", help="Also write the float32 probability/score map, STEM.prob.tif.",
        rich_help_panel=OUTPUT)] = False,
    overlay: Annotated[bool, typer.Option(
        "--overlay", help="Also write STEM.overlay.png (longest side at most 1024 px): the image with "
        "the mask's outline in yellow and the confluence in a corner, to check by eye; the record "
        "names it with its SHA-256. 'monolayer report' gathers them in one page.",
        rich_help_panel=OUTPUT)] = False,
    page: Annotated[int, typer.Option("--page", min=0, help="Page of multi-page TIFFs to read.",
                                      rich_help_panel=INPUT)] = 0,
    resize: Annotated[int | None, typer.Option(
        "--resize", min=16, help="Give the model images scaled so the longest side is this many "
        "pixels [default: what the checkpoint's sidecar says it was trained with, else none]; "
        "masks are scaled back, so confluence is still over the original image.",
        rich_help_panel=INPUT, show_default=False)] = None,
    normalize: Annotated[Normalize, typer.Option(
        "--normalize", help="Input intensities: auto (what the model's weights expect: sam the raw "
        "8-bit image, 16-bit/float stretched to 8 bits; cellpose the raw image, which it normalises "
        "itself; unet, maskrcnn, classical and checkpoints monolayer trained a 0.5-99.5 percentile "
        "stretch, or what the sidecar says), none (raw intensities: integers divided by 2**bits, "
        "floats as stored) or percentile.", rich_help_panel=INPUT)] = Normalize.auto,
    params_file: Annotated[Path | None, typer.Option(
        "--params", help="Parameters file written by 'monolayer calibrate' for this model (and these "
        "weights): its values apply below an explicit flag; the record's params name the file and "
        "its SHA-256.", rich_help_panel=MODEL, show_default=False, metavar="FILE")] = None,
    ignore_sidecar: Annotated[bool, typer.Option(
        "--ignore-sidecar", help="Use a checkpoint without its sidecar (WEIGHTS.monolayer.json: "
        "the preprocessing, --resize and thresholds it was trained with).",
        rich_help_panel=MODEL)] = False,
    name_pattern: Annotated[str | None, typer.Option(
        "--name-pattern", help="Read plate, well, site and time from each file name: a preset, "
        "incucyte (A172_Phase_C7_1_00d20h00m_4.tif: well C7, site 1, elapsed_h 20) or "
        "incucyte-export (B3_1_2024y05m17d_03h00m.tif), or a regex with named groups among plate, "
        "well, site, time (ISO 8601), elapsed_h. A name that does not match is an error for that "
        "image. Without it, time comes from the TIFF/EXIF date tag, if any (never the file's mtime).",
        rich_help_panel=INPUT, show_default=False, metavar="PRESET|REGEX")] = None,
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
    **backend_options: Any,
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
    spec = BACKENDS[model.value]
    setup = setup_model(spec, backend_options, normalize=normalize.value, resize=resize,
                        ignore_sidecar=ignore_sidecar, params_file=params_file)
    options = setup.kwargs
    shard_spec = parse_shard(shard) if shard is not None else None
    check_executor(executor.value, jobs, scheduler)
    started = time.perf_counter()
    jobs_list = plan_jobs(expand_inputs(inputs, recursive=recursive, exclude=out))
    if not jobs_list:
        raise NoInputError("no input images", "name image files or folders, or - for stdin")
    if shard_spec is not None:
        jobs_list = [job for job in jobs_list if in_shard(job, shard_spec)]
    ensure_folder(out)
    seg_options = SegmentOptions(out=out, save_prob=save_prob, page=page, resize=setup.resize,
                                 root=str(out.resolve()), normalize=setup.normalize,
                                 name_pattern=name_pattern, overlay=overlay,
                                 qc_reference=setup.qc_reference)
    tally = Tally()
    # The lock first: a run that must wait or give way has loaded no model for nothing.
    with output_lock(out, wait=wait, on_wait=None if quiet else lambda holder: say_warning(
            f"another run ({holder}) is writing to {out}; waiting for it")):
        backend = create_backend(model.value, **options)
        if save_prob and backend.score_kind is None:
            say_warning("--save-prob: this method produces no score map; only masks are written")
        described = describe_setup(backend, setup)
        removed = claim_folder(out, "segment", run_fingerprint(described, seg_options), overwrite=overwrite)
        if removed and not quiet:
            say_warning(f"--overwrite: deleted {removed} file(s) of the previous run in {out}")
        # Every name this run may write is listed before any is written (for --overwrite).
        OutputList(out).add(name for job in jobs_list if job.error is None
                            for name in (f"{job.stem}.mask.tif", f"{job.stem}.prob.tif" if save_prob else "",
                                         f"{job.stem}.overlay.png" if overlay else ""))
        journal = Journal(out, "segment")
        pool = Executor(executor.value, jobs=jobs, scheduler=scheduler,
                        recipe=Recipe(model.value, portable(options)), backend=backend, warn=say_warning)
        failed = False
        reused = 0
        try:
            with progress(len(jobs_list), "segment", quiet) as bar:
                task = bar.add_task("segment", total=len(jobs_list))
                records = run_segment(jobs_list, pool, seg_options, described, chunk_size=backend.batch_size,
                                      journal=journal, skip_existing=skip_existing)
                for record in write_records(records, tally):
                    bar.advance(task)
                    reused += bool(record.get("reused"))
                    if fail_fast and "error" in record:
                        failed = True
                        break
        except BaseException:
            pool.close(cancel=True)
            # A worker ended mid-write leaves a temporary file (never a final name): with every
            # worker gone and the lock still held, this run's own temporary files go too.
            remove_own_partials(out)
            raise
        finally:
            journal.close()
        pool.close(cancel=failed)
    if failed and not quiet:
        say_error("--fail-fast: stopped at the first failure; rerun with --skip-existing to go on")
    finish(tally, "segment", quiet, time.perf_counter() - started,
           note=f"{reused} reused" if skip_existing else None)
