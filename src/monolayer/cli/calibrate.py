"""``monolayer calibrate``: fit a model's parameters to a few labelled images of your microscope."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import typer

from monolayer.backends import BACKENDS
from monolayer.cli.backend_options import with_backend_options
from monolayer.cli.common import INPUT, MODEL, OUTPUT, cli_errors, say, say_warning
from monolayer.errors import NoInputError, UsageError

CALIBRATED = ("classical", "sam", "unet", "maskrcnn")
ModelName = enum.Enum("CalibrateModel", {name: name for name in CALIBRATED}, type=str)
# What calibrate fits (threshold) or cannot use (cellpose's own search has its own command).
SKIPPED = ("threshold", "thresholds", "truth", "diameter", "flow_threshold", "cellprob_threshold")


@cli_errors
@with_backend_options("segment", skip=SKIPPED)
def calibrate(
    inputs: Annotated[list[str], typer.Argument(help="Labelled images: files, folders, globs or -.",
                                                show_default=False, metavar="INPUT...")],
    truth: Annotated[list[Path], typer.Option(
        "--truth", "-t", help="Their ground truth: coco2mask JSON Lines, a COCO file or a mask folder "
        "(matched by checksum, path or file-name stem, as in evaluate). Repeatable.",
        rich_help_panel=INPUT, show_default=False)],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Parameters file to write (JSON; read by 'segment --params FILE').",
        rich_help_panel=OUTPUT, show_default=False)],
    model: Annotated[ModelName, typer.Option(
        "--model", "-m", help="classical: fit the phase method's parameters; sam, unet, maskrcnn: fit "
        "the probability threshold of the given --weights.", rich_help_panel=MODEL)] = ModelName.classical,
    page: Annotated[int, typer.Option("--page", min=0, help="Page of multi-page TIFFs.",
                                      rich_help_panel=INPUT)] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.",
                                        rich_help_panel=OUTPUT)] = False,
    **backend_options: Any,
) -> None:
    """Fit a model's parameters to labelled images; report an honest error estimate.

    classical: searches the phase method's parameters (texture threshold, noise
    factor, window, closing, hole size, erosion, halo, minimum object size); sam,
    unet, maskrcnn: the probability threshold, on maps the model makes once per
    image. The objective is the mean |confluence error| (IoU breaks ties). The
    error reported is cross-validated (leave-one-out up to 6 images, else 5-fold):
    each image is scored by a calibration run without it. The parameters written
    are fitted on all images and kept only if, cross-validated, they beat the
    defaults' error on these images; else the defaults are written ("calibrated":
    false). Prints one JSON record: the parameters, the cross-validated error and
    the default parameters' error on the same images.

    Label 3 or more images of your microscope and cells; 2 are accepted with a warning.

    Example: monolayer calibrate lab/*.tif --truth lab/masks -o scope1.json && monolayer segment today/ --params scope1.json --out masks/
    """
    from monolayer.cli.backend_options import describe_setup, setup_model
    from monolayer.commands import calibrate as command
    from monolayer.io.inputs import expand_inputs
    from monolayer.records import RecordWriter

    spec = BACKENDS[model.value]
    setup = setup_model(spec, backend_options)
    if model.value == "classical" and setup.kwargs.get("method", "phase") != "phase":
        raise UsageError("calibrate fits the phase method; canny has no parameters to calibrate",
                         "drop --method")
    items = list(expand_inputs(inputs, exclude=None))
    if not items:
        raise NoInputError("no input images", "name the labelled image files or folders")
    for item in items:  # an unreadable or empty input: said as such, not as "too few images"
        if item.error is not None:
            raise NoInputError(item.error)
    from monolayer.calibrate import check_count

    check_count(len(items), say_warning)
    images = command.labelled_images(items, truth, page)
    progress = None if quiet else (lambda message: say(f"calibrate: {message}"))
    if model.value == "classical":
        doc = command.calibrate_classical(images, normalize=setup.normalize, progress=progress)
    else:
        from monolayer.backends import create_backend

        backend = create_backend(model.value, **setup.kwargs)
        described = describe_setup(backend, setup)
        model_params = {k: v for k, v in setup.kwargs.items() if k not in ("runtime", "threshold")}
        doc = command.calibrate_learned(backend, described, images, normalize=setup.normalize,
                                        resize=setup.resize, model_params=model_params, progress=progress)
    from monolayer.calibrate import write_params

    sha = write_params(out, doc)
    RecordWriter().write(command.summary_record(doc, out, sha))
