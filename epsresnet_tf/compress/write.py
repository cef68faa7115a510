"""compress's outputs: the refusal to overwrite without --force, and writing reduced.keras,
the SavedModel, reduced.tflite, their raw-image twins and certificate.json."""

import dataclasses
from typing import Any

from epsresnet_tf import jsonsafe
from epsresnet_tf.compress.check import CLIENT_BATCH, Logits, rebatched
from epsresnet_tf.data.batches import iter_images
from epsresnet_tf.errors import UserError
from epsresnet_tf.exports import (
    check_onnx,
    check_tflite,
    custom_layers,
    export_saved_model,
    raw_image_net,
    write_onnx,
    write_tflite,
)
from epsresnet_tf.runfolder import (
    CERTIFICATE,
    REDUCED_MODEL,
    REDUCED_ONNX,
    REDUCED_RAW_MODEL,
    REDUCED_RAW_ONNX,
    REDUCED_RAW_TFLITE,
    REDUCED_TFLITE,
    SAVED_MODEL,
)

#: What compress writes into its folder; with --force the old ones are replaced as a whole.
OUTPUT_NAMES = (
    REDUCED_MODEL,
    REDUCED_RAW_MODEL,
    SAVED_MODEL,
    REDUCED_TFLITE,
    REDUCED_RAW_TFLITE,
    REDUCED_ONNX,
    REDUCED_RAW_ONNX,
    CERTIFICATE,
)


@dataclasses.dataclass(frozen=True)
class RawImages:
    """What the raw-image exports need: the dataset (`datasets.Dataset`), its mean image
    and channel order as training normalised with them, and `stored`, the check's batches
    as the dataset stores them (`NormalisedBatches.stored`), in the check's order."""

    dataset: Any
    mean: Any
    channel_order: str
    stored: Any

    @classmethod
    def of(cls, batches):
        """From a run's evaluation batches (`data.pipeline.NormalisedBatches`)."""
        pipe = batches.pipe
        return cls(pipe.description, pipe.mean, pipe.channel_order, list(batches.stored()))

    def describe(self):
        top = self.dataset.stored_levels
        return f"uint8 {'×'.join(map(str, self.dataset.image_shape))} images 0–{top}, as {self.dataset.name} stores them"


def prepare_out(out_dir, force):
    """Refuse to replace earlier outputs without --force; deletes nothing (the new outputs
    replace the old ones only once they are complete: staged_outputs)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} is a file; --out needs a folder")
    existing = [n for n in OUTPUT_NAMES if (out_dir / n).exists()]
    if existing and not force:
        raise UserError(
            f"{out_dir} already holds {', '.join(existing)}; pass --force to "
            "replace them or --out another folder"
        )


def _client_check(check_file, path, net, images, client_images):
    """`check_file` (check_tflite, check_onnx) at the run's batch and, under "batch_1", at
    CLIENT_BATCH."""
    check = check_file(path, net, iter_images(images))
    alone = check_file(path, net, iter_images(rebatched(images, CLIENT_BATCH, client_images)))
    return {
        **check,
        "passed_at_run_batch": check["passed"],
        "passed": check["passed"] and alone["passed"],
        "batch_1": alone,
    }


def write_outputs(
    out_dir, net, doc, check_data=(), client_images=None, tflite=False, raw=None, onnx=False
):
    """reduced.keras and the SavedModel of the standard-layer `net` (None: no exports), with
    `tflite` reduced.tflite checked against `net` on `check_data` at the run's batch and,
    under "batch_1", at CLIENT_BATCH (the first `client_images` images; None: all), then
    certificate.json; doc["exports"] says what was written and what loading it needs.
    With `raw` (RawImages): reduced-raw.keras (and reduced-raw.tflite) taking the images
    as the dataset stores them, and the SavedModel's `serving_default` likewise, checked
    for the same top-1 as `net` on the normalised ones. `onnx`: reduced.onnx (and
    reduced-raw.onnx) through tf2onnx, checked with onnxruntime like the TFLite files."""
    if net is not None:
        raw_net = (
            None if raw is None else raw_image_net(net, raw.dataset, raw.mean, raw.channel_order)
        )
        net.save(out_dir / REDUCED_MODEL)
        export_saved_model(net, out_dir / SAVED_MODEL, raw_net)
        custom = custom_layers(net)
        doc["exports"] = {
            "keras": REDUCED_MODEL,
            "saved_model": SAVED_MODEL,
            # Keras's own layers and ops: loads without epsresnet_tf. A gate kind registered
            # from outside the package keeps its layer, and then needs that code.
            "keras_standalone": not custom,
            "custom_layers": custom,
            "tflite": None,
            "onnx": None,
            "raw": None,
        }
        if raw_net is not None:
            raw_net.save(out_dir / REDUCED_RAW_MODEL)
            logits = Logits(check_data)
            a, _, _ = logits(net)
            b, _, _ = Logits(raw.stored)(raw_net)
            same = int((a.argmax(-1) == b.argmax(-1)).sum())
            doc["exports"]["raw"] = {
                "keras": REDUCED_RAW_MODEL,
                "saved_model_signature": "serving_default",
                "input": raw.describe(),
                "images": len(a),
                "same_top1": same,
                "max_abs_logit_diff": float(abs(a - b).max()) if a.size else 0.0,
                "passed": same == len(a) == len(b),
                "tflite": None,
                "onnx": None,
            }
        if tflite:
            path = out_dir / REDUCED_TFLITE
            size = write_tflite(net, path, saved_model=None if raw_net else out_dir / SAVED_MODEL)
            doc["exports"]["tflite"] = {
                "file": REDUCED_TFLITE,
                "bytes": size,
                **_client_check(check_tflite, path, net, check_data, client_images),
            }
            if raw_net is not None:
                path = out_dir / REDUCED_RAW_TFLITE
                size = write_tflite(raw_net, path)
                doc["exports"]["raw"]["tflite"] = {
                    "file": REDUCED_RAW_TFLITE,
                    "bytes": size,
                    **_client_check(check_tflite, path, raw_net, raw.stored, client_images),
                }
        if onnx:
            # the SavedModel's endpoints: "serve" is the normalised net, "serving_default"
            # the raw one where there is one (export_saved_model)
            entries = [("serve", REDUCED_ONNX, net, check_data)]
            if raw_net is not None:
                entries.append(("serving_default", REDUCED_RAW_ONNX, raw_net, raw.stored))
            for signature, name, model, images in entries:
                size = write_onnx(out_dir / SAVED_MODEL, signature, out_dir / name)
                check = _client_check(check_onnx, out_dir / name, model, images, client_images)
                place = doc["exports"] if model is net else doc["exports"]["raw"]
                place["onnx"] = {"file": name, "bytes": size, **check}
    (out_dir / CERTIFICATE).write_text(jsonsafe.dumps(doc, indent=2) + "\n")
