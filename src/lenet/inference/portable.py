"""Exported files written from a checkpoint, and checked: what `python -m lenet.export` runs.

The exported model is the checkpoint's network alone: a float32 batch N x 1 x 28 x 28 (any N) of normalized
images in, logits out (`lenet.inference.trained_model.INPUT`). Normalizing stays outside so the file computes exactly
what the
checkpoint's network does and the parity check compares like with like; the mean, std, class names, dataset and
source checkpoint travel in the file (ONNX metadata_props; lenet.json inside the .pt2), so lenet.predict and other
runtimes can use the file alone.

Every export ends with a parity check: the checkpoint and the exported file on the checkpoint's test images (random
images when the data is not there), the largest difference of their logits and the share of identical classes,
written with the metadata to `<output>.json`. A class that differs, or a difference above 1e-4, fails the export.
"""

import json
import logging
from pathlib import Path

import numpy as np
import torch
from hydra.utils import get_method
from omegaconf import DictConfig

from lenet.frame.errors import ConfigError, DataError, UserError
from lenet.inference.checkpoint_reader import predictor
from lenet.inference.model_files import EXPORTED, load
from lenet.inference.trained_model import METADATA_FILE, properties
from lenet.runs.rundir import model_file
from lenet.training.checkpoints import Checkpoint

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # on logits
GENERATED = 1000  # random images when the test images cannot be read
BATCH = 1000


class ParityError(UserError):
    """The exported file does not compute what the checkpoint computes."""


def export(cfg: DictConfig) -> dict:
    """Write the exported file and `<output>.json` (metadata and parity); return that record."""
    fmt, output = _format_and_output(cfg)
    ckpt = model_file(cfg.ckpt_path, Path(cfg.outputs_dir))
    if ckpt.suffix in EXPORTED:
        raise ConfigError(f"ckpt_path={ckpt} is already exported: give a checkpoint of lenet.train")
    saved = Checkpoint.open(ckpt)
    checkpoint = predictor(saved, device="cpu")
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        WRITERS[fmt](checkpoint.model, checkpoint.metadata(), output)
    except ImportError as error:  # torch.onnx imports onnx and onnxscript when it exports
        missing = getattr(error.__cause__, "name", None) or error.name
        raise ConfigError(f"format={fmt} needs {missing}: pip install 'lenet[export]'") from None

    images, inputs = parity_images(saved.datamodule(cfg.data))
    result = {"inputs": inputs, **parity(checkpoint, load(output, device="cpu"), images)}
    record = {"file": str(output), "format": fmt, "metadata": checkpoint.metadata(), "parity": result}
    report = Path(f"{output}.json")
    report.write_text(json.dumps(record, indent=2) + "\n")
    summary = (
        f"parity on {inputs}: max |logit difference| {result['max_abs_diff']:.2g}, "
        f"identical classes {result['identical_class_share']:.2%}"
    )
    if not result["passed"]:
        raise ParityError(f"{summary}: the export differs from the checkpoint (limit {TOLERANCE:g}); see {report}")
    log.info("%s", summary)
    log.info("Exported %s (%s) and %s", output.resolve(), fmt, report.resolve())
    return record


def _format_and_output(cfg: DictConfig) -> tuple[str, Path]:
    """The format (given, or from the output's suffix) and the file; predict tells formats apart by suffix."""
    suffix = Path(cfg.output).suffix.lstrip(".").lower() if cfg.output else None
    fmt = cfg.format or (suffix if suffix in WRITERS else "onnx")  # the format itself is checked by validate
    output = Path(cfg.output) if cfg.output else Path(cfg.run_dir) / f"lenet.{fmt}"
    if output.suffix.lower() != f".{fmt}":
        raise ConfigError(f"output={output} must end in .{fmt} for format={fmt}")
    return fmt, output


def _example_and_batch():
    # Batch 2, not 1: torch.export specializes a dimension whose example size is 1.
    return torch.zeros(2, 1, 28, 28), ({0: torch.export.Dim("batch")},)


def write_onnx(net, metadata: dict, output: Path) -> None:
    for name in ("onnxscript", "onnx_ir"):  # their optimizer passes log at INFO, which Hydra's console shows
        logging.getLogger(name).setLevel(logging.WARNING)
    example, dynamic = _example_and_batch()
    program = torch.onnx.export(
        net,
        (example,),
        dynamo=True,
        dynamic_shapes=dynamic,
        input_names=["images"],
        output_names=["logits"],
        verbose=False,
    )
    program.model.metadata_props.update(properties(metadata))
    program.save(str(output))
    get_method("onnx.checker.check_model")(str(output), full_check=True)  # onnx: the export extra


def write_pt2(net, metadata: dict, output: Path) -> None:
    example, dynamic = _example_and_batch()
    program = torch.export.export(net, (example,), dynamic_shapes=dynamic)
    torch.export.save(program, output, extra_files={METADATA_FILE: json.dumps(metadata)})


def parity_images(datamodule) -> tuple[np.ndarray, str]:
    """The checkpoint's test images when they can be read, else GENERATED random ones; and what they are."""
    try:
        images, source = datamodule.test_images()
        return images.numpy(), f"the {len(images)} test images of {source}"
    except DataError as error:
        reason = str(error)
    log.info("Parity on random images: %s", reason)
    images = np.random.default_rng(0).integers(0, 256, (GENERATED, 28, 28), dtype=np.uint8)
    return images, f"{GENERATED} random images"


def parity(reference, exported, images: np.ndarray) -> dict:
    """Both models' logits on the same images, batch by batch: the largest difference, the share of equal classes."""
    worst, same = 0.0, 0
    for start in range(0, len(images), BATCH):
        batch = images[start : start + BATCH]
        expected, got = reference.logits(batch), exported.logits(batch)
        worst = max(worst, float(np.abs(expected - got).max()))
        same += int((expected.argmax(axis=1) == got.argmax(axis=1)).sum())
    return {
        "images": len(images),
        "max_abs_diff": worst,
        "identical_class_share": same / len(images),
        "tolerance": TOLERANCE,
        "passed": worst <= TOLERANCE and same == len(images),
    }


WRITERS = {"onnx": write_onnx, "pt2": write_pt2}  # one for each of lenet.frame.keys.FORMATS (format= takes those)
