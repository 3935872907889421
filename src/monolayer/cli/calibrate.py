"""``monolayer calibrate``: fit a model's parameters to a few labelled images of your microscope."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import typer

from monolayer.backends import BACKENDS
from monolayer.cli.backend_options import with_backend_options
from monolayer.cli.common import INPUT, MODEL, OUTPUT, cli_errors, say, say_warning
from monolayer.errors import NoInputError

CALIBRATED = ("classical", "sam", "unet", "maskrcnn")
ModelName = enum.Enum("CalibrateModel", {name: name for name in CALIBRATED}, type=str)
# What calibrate fits (threshold), or cannot vary: the classical method is always phase (canny
# has nothing to calibrate). Options only other models take are not offered at all.
SKIPPED = ("threshold", "thresholds", "truth", "method")


@cli_errors
@with_backend_options("segment", skip=SKIPPED, models=CALIBRATED)
def calibrate(
    inputs: Annotated[list[str], typer.Argument(help="Labelled images: files, folders, globs or -.",
                                                show_default=False, metavar="INPUT...")],
    truth: Annotated[list[Path], typer.Option(
        "--truth", "-t", help="Their ground truth: coco2mask JSON Lines, a COCO file or a mask folder "
        "(matched by checksum, path or file-name stem, as in evaluate). Repeatable.",
        rich_help_panel=INPUT, show_default=False)],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Parameters file to write (JSON; read by 'segment --params FILE'). A new "
        "file name, or an earlier calibration's file to replace: a folder, a symbolic link, any file the "
        "images or truth name (masks, binaries) or any other existing file is refused before any work.",
        rich_help_panel=OUTPUT, show_default=False)],
    model: Annotated[ModelName, typer.Option(
        "--model", "-m", help="classical: fit the phase method's parameters; sam, unet, maskrcnn: fit "
        "the probability threshold of the given --weights.", rich_help_panel=MODEL)] = ModelName.classical,
    page: Annotated[int, typer.Option("--page", min=0, help="Page of multi-page TIFFs.",
                                      rich_help_panel=INPUT)] = 0,
    min_iou: Annotated[float, typer.Option(
        "--min-iou", min=0.0, max=1.0, help="Refuse (exit 65, no file) when the mean IoU of what would "
        "be written, estimated honestly (the fitted parameters' cross-validated IoU, or the defaults' "
        "IoU when they are kept), is below this: the masks hardly overlap the labelled cells, so the "
        "parameters measure nothing. 0 accepts anything.", rich_help_panel=OUTPUT)] = 0.2,
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

    command.check_output(out, [], truth)  # a folder, a link, a missing folder: before any work
    spec = BACKENDS[model.value]
    setup = setup_model(spec, backend_options)
    items = list(expand_inputs(inputs, exclude=None))
    if not items:
        raise NoInputError("no input images", "name the labelled image files or folders")
    for item in items:  # an unreadable or empty input: said as such, not as "too few images"
        if item.error is not None:
            raise NoInputError(item.error)
    from monolayer.calibrate import check_count

    check_count(len(items), say_warning)
    # -o against every input and truth file, then the images (sizes, truth) before any fitting.
    images = command.labelled_images(items, truth, page, out=out, min_side=spec.min_side)
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
    command.assess(images, doc, say_warning, min_iou=min_iou)
    from monolayer.calibrate import write_params

    sha = write_params(out, doc)
    record = command.summary_record(doc, out, sha)
    if not quiet:
        say(f"calibrate: {command.summary_line(record)}")
    RecordWriter().write(record)
