"""``monolayer cellpose-thresholds``: the paper's grid search for Cellpose's two thresholds."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from monolayer.cli.common import HARDWARE, INPUT, MODEL, OUTPUT, cli_errors
from monolayer.devices import DEVICES
from monolayer.errors import NoInputError
from monolayer.io.inputs import expand_inputs
from monolayer.records import RecordWriter, new_record


Device = enum.Enum("Device", {name: name for name in DEVICES}, type=str)


@cli_errors
def cellpose_thresholds(
    inputs: Annotated[list[str], typer.Argument(help="Labelled images: files, folders, globs or -.",
                                                show_default=False, metavar="INPUT...")],
    truth: Annotated[list[Path], typer.Option(
        "--truth", "-t", help="Their ground truth: coco2mask JSON Lines, a COCO file or a mask folder "
        "(matched by checksum, path or file-name stem). Repeatable.", rich_help_panel=INPUT,
        show_default=False)],
    weights: Annotated[str, typer.Option("--weights", "-w", help="Cellpose 3 checkpoint file, or a "
                                         "model type (cyto3, ...) present in cellpose's model folder.",
                                         rich_help_panel=MODEL, show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="JSON file for the chosen thresholds "
                                      "(read by 'segment --model cellpose --thresholds FILE'). When "
                                      "--weights is a file, its sidecar (WEIGHTS.monolayer.json) gets "
                                      "them too, so segment applies them by itself.",
                                      rich_help_panel=OUTPUT, show_default=False)],
    diameter: Annotated[str | None, typer.Option(
        "--diameter", help="Mean cell diameter in pixels, or 'auto' to measure it on the --truth "
        "masks [default: the checkpoint's].", rich_help_panel=MODEL, show_default=False)] = None,
    device: Annotated[Device | None, typer.Option("--device", help="Where to run [default: auto].",
                                                  rich_help_panel=HARDWARE, show_default=False)] = None,
    page: Annotated[int, typer.Option("--page", min=0, help="Page of multi-page TIFFs.",
                                      rich_help_panel=INPUT)] = 0,
) -> None:
    """Tune Cellpose's flow and cell-probability thresholds on labelled images.

    The paper's search: flow threshold 0..3 and cell probability threshold -6..6 in
    steps of 0.5 (175 pairs), maximising the mean foreground IoU, with a penalty of 1
    for an image where nothing is found although cells are labelled. The network runs
    once per image. Writes every pair's score to --out and prints the chosen pair as
    one JSON record.

    Example: monolayer cellpose-thresholds train/ -t truth.jsonl -w cp.pth -o thr.json
    """
    from monolayer.backends import BACKENDS, create_backend
    from monolayer.cli.backend_options import setup_model

    spec = BACKENDS["cellpose"]
    spec.require("cellpose-thresholds")  # before anything imports torch: exit 69, not 70
    from monolayer.commands.cellpose_search import labelled_images, search_thresholds, write_thresholds

    items = list(expand_inputs(inputs, exclude=None))
    if not items:
        raise NoInputError("no input images")
    setup = setup_model(spec, {"weights": weights, "device": device, "diameter": diameter,
                               "truth": truth if diameter == "auto" else None})
    backend = create_backend("cellpose", **setup.kwargs)
    images, masks, names = labelled_images(items, truth, page, normalize=setup.normalize)
    result = search_thresholds(backend, images, masks)
    write_thresholds(out, {**result, "images": names})
    summary = {k: v for k, v in result.items() if k != "grid"}
    sidecar = None
    weights_file = Path(weights).expanduser()
    if weights_file.is_file():
        # The checkpoint now carries its tuned thresholds: 'segment -m cellpose -w FILE' applies
        # them (below an explicit flag), and they can never be used with other weights.
        from monolayer.sidecar import update_sidecar

        sidecar = str(update_sidecar(weights_file, model="cellpose", weights_sha256=result["weights_sha256"],
                                     normalize=setup.normalize,
                                     params={"flow_threshold": result["flow_threshold"],
                                             "cellprob_threshold": result["cellprob_threshold"]}))
    RecordWriter().write(new_record("cellpose-thresholds", **summary, thresholds=str(out), sidecar=sidecar))
