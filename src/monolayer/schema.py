"""Every record kind monolayer writes and reads, with its fields' types: the one place they are defined.

Readers check records here before using them, so a wrong type, a missing key, a
NUL byte in a path or a string where a number belongs is one
``file:line: message`` (exit 65) for that record, never a crash or a silently
dropped value. A record of another kind (``monolayer.eval/1`` handed to a
reader of segment records) is refused by its ``schema`` tag; a record without a
tag (written by another tool) is checked field by field.

>>> check("segment", {"mask": "a.mask.tif", "confluence": 0.3}, "p.jsonl:1", require=("mask",))["mask"]
'a.mask.tif'
>>> check("segment", {"mask": "a.mask.tif", "confluence": "30%"}, "p.jsonl:2")
Traceback (most recent call last):
...
monolayer.errors.DataError: p.jsonl:2: field 'confluence' is '30%', expected a number from 0 to 1
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from monolayer.errors import (
    EXIT_CANTCREAT, EXIT_DATA, EXIT_INTERNAL, EXIT_IO, EXIT_ITEMS_FAILED, EXIT_NO_INPUT, EXIT_TEMPFAIL,
    EXIT_UNAVAILABLE, DataError,
)

SCHEMA_PREFIX = "monolayer."

# Exit codes a failed item may carry. Anything else in an input record (0, 256,
# "x") is read as a plain failure (1): a record that failed can never make a
# batch exit 0.
ITEM_EXIT_CODES = frozenset({EXIT_ITEMS_FAILED, EXIT_DATA, EXIT_NO_INPUT, EXIT_UNAVAILABLE, EXIT_INTERNAL,
                             EXIT_CANTCREAT, EXIT_IO, EXIT_TEMPFAIL})


def item_exit_code(value: Any) -> int:
    """The exit code of a failed item, from whatever an input record says.

    >>> item_exit_code(66), item_exit_code(0), item_exit_code(256), item_exit_code("65")
    (66, 1, 1, 1)
    """
    if isinstance(value, int) and not isinstance(value, bool) and value in ITEM_EXIT_CODES:
        return value
    return EXIT_ITEMS_FAILED


_SHA256 = re.compile(r"[0-9a-f]{64}")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why a string cannot be used as a name or path, or None."""
    if "\x00" in value:
        return "contains a NUL byte"
    if _SURROGATE.search(value):
        return "is not valid Unicode (a lone surrogate)"
    return None


def path_problem(value: Any) -> str | None:
    """Why a value cannot be a file path, or None."""
    if not isinstance(value, str):
        return f"is {_show(value)}, expected a file path (a string)"
    if not value:
        return "is empty, expected a file path"
    problem = text_problem(value)
    if problem:
        return problem
    if value != value.strip():
        return f"{value!r} has leading or trailing whitespace"
    return None


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any) -> bool:
    """A JSON number that is a finite float: not a bool, not 1e999 (read as inf), not an
    integer beyond the float range (a 400-digit one, which float() refuses)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, int):
        return abs(value) <= sys.float_info.max  # exact: Python compares int and float exactly
    return math.isfinite(value)


def finite_float(value: Any, where: str, name: str) -> float:
    """A record's numeric field as a float, or :class:`DataError` naming ``where`` and the
    field when the number has no float (an integer beyond +-1.8e308, or inf).

    >>> finite_float(3, "e.jsonl:1", "iou")
    3.0
    >>> finite_float(10**400, "e.jsonl:2", "iou")
    Traceback (most recent call last):
    ...
    monolayer.errors.DataError: e.jsonl:2: field 'iou' is an integer beyond the floating-point range (+-1.8e308)
    """
    if not _is_number(value):
        if isinstance(value, int) and not isinstance(value, bool):
            raise DataError(f"{_where_field(where, name)} is an integer beyond the floating-point range "
                            "(+-1.8e308)")
        raise DataError(f"{_where_field(where, name)} is {_show(value)}, not a finite number")
    return float(value)


def check_tagged(record: dict[str, Any], where: str) -> dict[str, Any]:
    """``record`` checked as the kind its ``schema`` tag names (``monolayer.eval/1``: an eval
    record, its ``iou`` a number from 0 to 1), when monolayer knows that kind; a record
    without a tag, or with another tool's, is free-form and passes as it is.

    >>> check_tagged({"schema": "monolayer.eval/1", "iou": 5}, "e.jsonl:3")
    Traceback (most recent call last):
    ...
    monolayer.errors.DataError: e.jsonl:3: field 'iou' is 5, expected a number from 0 to 1
    >>> check_tagged({"iou": 5}, "e.jsonl:4")
    {'iou': 5}
    """
    tag = record.get("schema")
    if isinstance(tag, str) and tag.startswith(SCHEMA_PREFIX):
        kind = tag[len(SCHEMA_PREFIX):].split("/")[0]
        if kind in KINDS:
            return check(kind, record, where)
    return record


@dataclass(frozen=True)
class Type:
    """A field type: a name for messages and docs, and a check."""

    name: str
    expected: str

    def problem(self, value: Any) -> str | None:  # noqa: PLR0911 - one branch per type
        if value is None:
            return None if self.name.endswith("?") else f"is null, expected {self.expected}"
        base = self.name.rstrip("?")
        if base == "path":
            return path_problem(value)
        if base == "str":
            if not isinstance(value, str):
                return f"is {_show(value)}, expected {self.expected}"
            return text_problem(value)
        if base == "sha256":
            ok = isinstance(value, str) and _SHA256.fullmatch(value) is not None
            return None if ok else f"is {_show(value)}, expected {self.expected}"
        if base == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
            return None if ok else f"is {_show(value)}, expected {self.expected}"
        if base == "count":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            return None if ok else f"is {_show(value)}, expected {self.expected}"
        if base == "number":
            return None if _is_number(value) else f"is {_show(value)}, expected {self.expected}"
        if base == "fraction":
            ok = _is_number(value) and 0.0 <= value <= 1.0
            return None if ok else f"is {_show(value)}, expected {self.expected}"
        if base == "bool":
            return None if isinstance(value, bool) else f"is {_show(value)}, expected {self.expected}"
        if base == "object":
            return None if isinstance(value, dict) else f"is {_show(value)}, expected {self.expected}"
        if base == "scalar":
            ok = isinstance(value, (str, int, float, bool)) and not (
                isinstance(value, str) and text_problem(value))
            return None if ok else f"is {_show(value)}, expected {self.expected}"
        raise AssertionError(f"unknown field type {self.name}")  # a bug in this table


def _t(name: str, expected: str) -> Type:
    return Type(name, expected)


PATH = _t("path", "a file path")
PATH_OR_NULL = _t("path?", "a file path or null")
SHA = _t("sha256", "a SHA-256 (64 hex digits)")
SHA_OR_NULL = _t("sha256?", "a SHA-256 (64 hex digits) or null")
STR = _t("str", "a string")
STR_OR_NULL = _t("str?", "a string or null")
INT = _t("int", "an integer")
COUNT = _t("count", "a non-negative integer")
NUMBER = _t("number", "a finite number")
NUMBER_OR_NULL = _t("number?", "a finite number or null")
FRACTION = _t("fraction", "a number from 0 to 1")
BOOL = _t("bool", "true or false")
OBJECT = _t("object", "an object")
SCALAR = _t("scalar", "a string, number or boolean")


@dataclass(frozen=True)
class Field:
    name: str
    type: Type
    doc: str


@dataclass(frozen=True)
class Kind:
    """One record kind: ``monolayer.<name>/1`` and its fields.

    ``doc`` (plain text) is also quoted in error messages; ``notes`` (Markdown) is
    only for the README's generated "Output records" section (:func:`records_markdown`).
    """

    name: str
    doc: str
    fields: tuple[Field, ...]
    notes: str = ""

    @property
    def tag(self) -> str:
        from monolayer.records import schema_tag

        return schema_tag(self.name)

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


# Fields every error record has, whatever its kind.
ERROR_FIELDS = (
    Field("error", STR, "what went wrong (also printed on stderr)"),
    Field("exit_code", INT, "the documented exit code of this failure"),
)

_COMMON = (
    Field("schema", STR, "monolayer.KIND/MAJOR"),
    Field("version", STR, "the monolayer version that wrote it"),
)


class _Strings(Type):
    """A list of strings (the growth record's ``flags``)."""

    def problem(self, value: Any) -> str | None:
        ok = isinstance(value, list) and all(isinstance(v, str) and not text_problem(v) for v in value)
        return None if ok else f"is {_show(value)}, expected {self.expected}"

KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("segment", "one per image, from segment", _COMMON + (
        Field("image", PATH, "the image as named on the command line"),
        Field("image_sha256", SHA, "SHA-256 of the image file"),
        Field("page", COUNT, "page read from a multi-page file"),
        Field("plate", STR, "plate, from the file name (--name-pattern)"),
        Field("well", STR, "well, from the file name (--name-pattern)"),
        Field("site", SCALAR, "site (field of view) in the well, from the file name"),
        Field("time", STR_OR_NULL, "acquisition time, ISO 8601: from the file name, else the TIFF/EXIF date tag, else null"),
        Field("elapsed_h", NUMBER, "hours since the experiment started, from the file name"),
        Field("time_source", STR_OR_NULL, "where the time came from: name, tiff, exif (null: none)"),
        Field("width", COUNT, "image width, px"),
        Field("height", COUNT, "image height, px"),
        Field("mask", PATH, "uint8 0/1 mask, STEM.mask.tif"),
        Field("mask_sha256", SHA, "SHA-256 of the mask file"),
        Field("prob", PATH_OR_NULL, "float32 score map, STEM.prob.tif, or null"),
        Field("prob_sha256", SHA_OR_NULL, "SHA-256 of the score map, or null"),
        Field("overlay", PATH, "with --overlay: STEM.overlay.png, the image with the mask's outline"),
        Field("overlay_sha256", SHA, "SHA-256 of the overlay"),
        Field("confluence", FRACTION, "foreground / image area"),
        Field("model", STR, "backend name"),
        Field("method", STR_OR_NULL, "method within the backend"),
        Field("params", OBJECT, "the model's parameters; for every model also `normalize` (the input "
              "preprocessing), `resize`, `sources` (flag, file, sidecar or default, per parameter) and, "
              "when used, `sidecar` / `thresholds` / `params_file` (the file, its SHA-256 and the weights it "
              "was made for; a `--params` file must match the run's normalize and resize)"),
        Field("weights", STR_OR_NULL, "checkpoint name or path"),
        Field("weights_sha256", SHA_OR_NULL, "SHA-256 of the weights file"),
        Field("seconds", NUMBER, "time spent on this image"),
        Field("reused", BOOL, "true when taken from the journal by --skip-existing"),
        Field("instances", COUNT, "instance count (cellpose, maskrcnn, sam auto)"),
        Field("mean_confidence", NUMBER_OR_NULL, "maskrcnn: mean score of the kept instances (the paper's "
              "uncertainty for that model)"),
        Field("generated_masks", COUNT, "sam auto: masks generated"),
        Field("qc", OBJECT, "image quality numbers measured on the input (see `flags` and "
              "monolayer.qc): clipped_low, clipped_high, noise, skew, texture, sharpness, "
              "scale, illumination"),
        Field("flags", _Strings("strings", "a list of strings"), "image quality and domain warnings: "
              "invalid_pixels, out_of_focus, saturated, uneven_illumination, no_texture, unlike_calibration; the number "
              "is still given, but check a flagged image by eye"),
    ), notes="`params` holds the model's parameters and, for learned models, `device`, `precision` (what ran), `precision_requested`, "
             "`seed` and `batch_size`. `seconds` is the only field that differs between two runs of the "
             "same images, weights and seed on the same device."),
    Kind("calibrate", "one per calibration, from calibrate", _COMMON + (
        Field("model", STR, "the backend calibrated"),
        Field("method", STR_OR_NULL, "method within the backend"),
        Field("params", OBJECT, "the parameters written (what segment --params applies): the fitted "
              "ones, or the defaults when fitting did not beat them (see `calibrated`)"),
        Field("output", PATH, "the parameters file written"),
        Field("output_sha256", SHA, "SHA-256 of that file"),
        Field("weights_sha256", SHA_OR_NULL, "SHA-256 of the weights calibrated (null: classical)"),
        Field("images", COUNT, "labelled images used"),
        Field("folds", COUNT, "cross-validation folds (leave-one-out up to 6 images, else 5)"),
        Field("calibrated", BOOL, "true: the fitted parameters beat the defaults' error on these images "
              "in cross-validation and were kept; false: the defaults were kept"),
        Field("written", STR, "which parameters the file holds: fitted (calibrated true) or default"),
        Field("cv_abs_confluence_error", FRACTION, "the headline estimate: mean |confluence error| on "
              "held-out images of the calibration procedure that produced the file (nested "
              "cross-validation: the fit and the choice of fitted or default redone without each image). "
              "It estimates calibrating on images like these, not the written parameters themselves: for "
              "those see fitted_params_cv_abs_confluence_error (written fitted) or "
              "default_abs_confluence_error (written default)"),
        Field("cv_iou", FRACTION, "mean IoU on held-out images, same procedure"),
        Field("fitted_params_cv_abs_confluence_error", FRACTION, "the fitted parameters' own "
              "cross-validated estimate: mean |confluence error| of each image under parameters fitted "
              "on the others (no choice; what the choice compares with the defaults' error)"),
        Field("fitted_params_cv_iou", FRACTION, "mean IoU, same estimate; calibrate refuses (exit 65) "
              "when the IoU of what would be written is below --min-iou"),
        Field("default_abs_confluence_error", FRACTION, "mean |confluence error| of the default "
              "parameters on the same images (nothing fitted: an honest estimate of the defaults)"),
        Field("default_iou", FRACTION, "mean IoU of the default parameters on the same images"),
        Field("train_abs_confluence_error", FRACTION, "mean |confluence error| of the written "
              "parameters on the images they were fitted on (optimistic)"),
        Field("image_flags", OBJECT, "the calibration images with quality flags (monolayer.qc, no "
              "reference): image -> flags; each is also warned about on stderr"),
        Field("similar_images", COUNT, "pairs of calibration images that look like one field of view "
              "(the same well, site and tile by name, or near-duplicate content): not independent, so "
              "the cross-validated errors are optimistic; listed in the file and warned about"),
        Field("seconds", NUMBER, "time spent"),
    )),
    Kind("truth", "one per COCO image, from coco2mask", _COMMON + (
        Field("image", PATH, "image path under --images, or the COCO file_name"),
        Field("image_sha256", SHA, "SHA-256 of the image file (with --images)"),
        Field("image_id", SCALAR, "COCO image id"),
        Field("file_name", STR, "COCO file_name"),
        Field("mask", PATH, "uint16 instance labels, STEM.labels.tif"),
        Field("mask_sha256", SHA, "SHA-256 of the label file"),
        Field("binary", PATH_OR_NULL, "0/1 mask, STEM.binary.tif, or null"),
        Field("binary_sha256", SHA_OR_NULL, "SHA-256 of the 0/1 mask, or null"),
        Field("width", COUNT, "image width, px"),
        Field("height", COUNT, "image height, px"),
        Field("instances", COUNT, "instances (objects with --lazy)"),
        Field("crowd", COUNT, "iscrowd regions"),
        Field("confluence", FRACTION, "union of all instances / image area"),
        Field("lazy", BOOL, "touching instances merged"),
        Field("annotations", PATH, "the COCO file"),
    )),
    Kind("eval", "one per image, from evaluate", _COMMON + (
        Field("image", STR, "the image (or the mask when no image is known)"),
        Field("truth", STR, "the truth mask used"),
        Field("mask", PATH, "the predicted mask"),
        Field("matched_by", STR, "sha256, path or stem"),
        Field("width", COUNT, "px"),
        Field("height", COUNT, "px"),
        Field("iou", FRACTION, "intersection over union (1 when both are empty)"),
        Field("dice", FRACTION, "Dice coefficient (1 when both are empty)"),
        Field("confluence_pred", FRACTION, "predicted confluence"),
        Field("confluence_true", FRACTION, "true confluence"),
        Field("abs_confluence_error", FRACTION, "|confluence_pred - confluence_true|"),
        Field("model", STR, "from the prediction record"),
        Field("method", STR_OR_NULL, "from the prediction record"),
    ), notes="`evaluate --tag KEY=VALUE` adds fields of its own, which cannot replace any of these."),
    Kind("rank", "one per image, from entropy-rank", _COMMON + (
        Field("rank", INT, "1 = most uncertain"),
        Field("image", PATH, "the image"),
        Field("image_sha256", SHA, "SHA-256 of the image"),
        Field("mask", PATH, "its mask"),
        Field("prob", PATH_OR_NULL, "its score map"),
        Field("model", STR, "backend"),
        Field("method", STR_OR_NULL, "method"),
        Field("confluence", FRACTION, "predicted confluence"),
        Field("entropy", NUMBER, "mean per-pixel binary Shannon entropy of the probability map, bits"),
        Field("score", NUMBER, "maskrcnn: mean confidence of the kept instances, 0 if none"),
        Field("definition", STR, "how the score was computed, in one sentence"),
    ), notes="A record has `entropy` (probability maps, ranked highest first) or, for Mask R-CNN, "
             "`score` (ranked lowest first)."),
    Kind("stats", "one per group and field, from stats", _COMMON + (
        Field("field", STR, "the summarised field"),
        Field("n", COUNT, "values"),
        Field("mean", NUMBER_OR_NULL, "mean"),
        Field("std", NUMBER_OR_NULL, "sample standard deviation (null for n = 1)"),
        Field("median", NUMBER_OR_NULL, "median"),
        Field("q1", NUMBER_OR_NULL, "first quartile"),
        Field("q3", NUMBER_OR_NULL, "third quartile"),
        Field("iqr", NUMBER_OR_NULL, "q3 - q1"),
        Field("min", NUMBER_OR_NULL, "minimum"),
        Field("max", NUMBER_OR_NULL, "maximum"),
    ), notes="Each record also has its group's value of every `--by` key, named as the key was given "
             "(`image:dir`)."),
    Kind("train", "one per epoch, from train", _COMMON + (
        Field("model", STR, "the trained model"),
        Field("epoch", COUNT, "1-based epoch"),
        Field("epochs", COUNT, "epochs in total"),
        Field("loss", NUMBER, "mean training loss of the epoch"),
        Field("val_iou", FRACTION, "with --val: mean IoU over the validation images"),
        Field("val_abs_confluence_error", FRACTION, "with --val: mean absolute confluence error over "
              "the validation images"),
        Field("seconds", NUMBER, "time of the epoch"),
    ), notes="A resumed run repeats the finished epochs' records first, so a log holds each epoch once."),
    Kind("growth", "one per culture (--by group), from growth", _COMMON + (
        Field("n", COUNT, "time points (records at one time averaged)"),
        Field("t_first", SCALAR, "first time, as given"),
        Field("t_last", SCALAR, "last time, as given"),
        Field("confluence_last", _t("fraction?", "a number from 0 to 1 or null"),
              "fitted confluence at t_last (null: too few points)"),
        Field("model", STR_OR_NULL, "growth curve with the most weight: logistic, richards-2 or richards-3"),
        Field("rate_per_h", NUMBER_OR_NULL, "per-capita growth rate at low density, per hour (null when "
              "the data cannot tell, as on a plateau)"),
        Field("doubling_time_h", NUMBER_OR_NULL, "ln 2 / rate_per_h (null when not growing or not known)"),
        Field("capacity", _t("fraction?", "a number from 0 to 1 or null"),
              "plateau confluence, or null when the data cannot tell yet"),
        Field("harvest_at", FRACTION, "the confluence asked for (--harvest-at)"),
        Field("hours_to_harvest", NUMBER_OR_NULL, "median forecast from t_last; 0 when reached, null "
              "when not expected to be reached"),
        Field("hours_to_harvest_low", NUMBER_OR_NULL, "80 % interval, lower end (null: unlikely to be reached)"),
        Field("hours_to_harvest_high", NUMBER_OR_NULL, "80 % interval, upper end (null: unbounded)"),
        Field("eta", _t("scalar?", "a string, a number or null"), "when: ISO 8601 when the times were, "
              "else hours on their scale; null when hours_to_harvest is"),
        Field("fit_rmse", NUMBER_OR_NULL, "root mean square of observed minus fitted confluence"),
        Field("flags", _Strings("strings", "a list of strings"), "too_few_points, reached, not_growing, "
              "plateau, above_capacity, beyond_horizon, noisy"),
    ), notes="Each record also has its group's value of every `--by` key, named as the key was given. "
             "`eta` is null when `hours_to_harvest` is."),
)}


def records_markdown() -> str:
    """The README's list of record kinds and their fields, rendered from :data:`KINDS`.

    ``tools/gen_docs.py`` puts it between ``<!-- records:start -->`` and
    ``<!-- records:end -->`` in README.md, and a test fails when the two differ.

    >>> print(records_markdown().splitlines()[2])
    | field | type | meaning |
    """
    lines = ["Fields of every record:", "", *_markdown_table(_COMMON), "",
             "A record for an item that failed has these instead of results, beside the fields that "
             "name the item (such as `image`):", "", *_markdown_table(ERROR_FIELDS)]
    for kind in KINDS.values():
        lines += ["", f"**`{kind.tag}`**: {kind.doc}.", "",
                  *_markdown_table(f for f in kind.fields if f not in _COMMON)]
        if kind.notes:
            lines += ["", kind.notes]
    return "\n".join(lines) + "\n"


def _markdown_table(fields: Iterable[Field]) -> list[str]:
    rows = ["| field | type | meaning |", "|---|---|---|"]
    for f in fields:
        type_words = re.sub(r"^an? ", "", f.type.expected)
        rows.append(f"| `{f.name}` | {_markdown_cell(type_words)} | {_markdown_cell(f.doc)} |")
    return rows


def _markdown_cell(text: str) -> str:
    r"""Text that stays inside one cell of a Markdown table.

    >>> print(_markdown_cell("|a - b|"))
    \|a - b\|
    """
    return text.replace("|", r"\|")


def _where_field(where: str, name: str) -> str:
    return f"{where}: field {name!r}"


def check(kind: str, record: dict[str, Any], where: str, *, require: Iterable[str] = ()) -> dict[str, Any]:
    """``record`` if it is a valid ``kind`` record (or an error record); else :class:`DataError`.

    Every known field that is present must have its type; the fields in
    ``require`` must be present. Unknown fields are left alone (other tools and
    ``evaluate --tag`` add their own).
    """
    spec = KINDS[kind]
    tag = record.get("schema")
    if tag is not None:
        if not isinstance(tag, str):
            raise DataError(f"{_where_field(where, 'schema')} is {_show(tag)}, expected a string")
        if tag.startswith(SCHEMA_PREFIX) and tag.split("/")[0] != spec.tag.split("/")[0]:
            raise DataError(f"{where}: a {tag} record where {spec.tag} records are expected",
                            f"give this command {kind} records")
        if tag.startswith(SCHEMA_PREFIX) and tag != spec.tag:
            raise DataError(f"{where}: schema {tag} is not supported (this monolayer reads {spec.tag})")
    if "error" in record:
        return check_error(record, where)
    for name in require:
        if name not in record:
            raise DataError(f"{where}: the record has no {name!r} field",
                            f"expected {spec.tag} records ({spec.doc})")
    for f in spec.fields:
        if f.name in record:
            problem = f.type.problem(record[f.name])
            if problem:
                raise DataError(f"{_where_field(where, f.name)} {problem}")
    return record


def check_error(record: dict[str, Any], where: str) -> dict[str, Any]:
    """An error record with its message as a string and a valid item exit code."""
    message = record.get("error")
    if not isinstance(message, str) or text_problem(message):
        raise DataError(f"{_where_field(where, 'error')} is {_show(message)}, expected a message")
    return record


def error_code(record: dict[str, Any]) -> int:
    """The exit code an error record read back from a file stands for: its own when it is
    a documented failure code, 65 when it has none, else 1 (see :func:`item_exit_code`)."""
    return item_exit_code(record.get("exit_code", EXIT_DATA))


def reserved_fields(kind: str) -> frozenset[str]:
    """Names a command computes for ``kind`` records: user tags must not replace them."""
    return frozenset(f.name for f in KINDS[kind].fields) | {f.name for f in ERROR_FIELDS}


__all__ = ["KINDS", "Kind", "Field", "check", "check_error", "check_tagged", "error_code", "finite_float",
           "item_exit_code", "path_problem", "reserved_fields", "EXIT_DATA"]
