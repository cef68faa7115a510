"""compress's outputs: the refusal to overwrite without --force, and writing reduced.keras,
the SavedModel, reduced.tflite and certificate.json."""

from epsresnet_tf import jsonsafe
from epsresnet_tf.compress.check import CLIENT_BATCH, rebatched
from epsresnet_tf.data.batches import iter_images
from epsresnet_tf.errors import UserError
from epsresnet_tf.exports import check_tflite, custom_layers, write_tflite
from epsresnet_tf.runfolder import CERTIFICATE, REDUCED_MODEL, REDUCED_TFLITE, SAVED_MODEL

#: What compress writes into its folder; with --force the old ones are replaced as a whole.
OUTPUT_NAMES = (REDUCED_MODEL, SAVED_MODEL, REDUCED_TFLITE, CERTIFICATE)


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


def write_outputs(out_dir, net, doc, tflite=False, check_data=(), client_images=None):
    """reduced.keras and the SavedModel of the standard-layer `net` (None: no exports), with
    `tflite` reduced.tflite checked against `net` on `check_data` at the run's batch and,
    under "batch_1", at CLIENT_BATCH (the first `client_images` images; None: all), then
    certificate.json; doc["exports"] says what was written and what loading it needs."""
    if net is not None:
        net.save(out_dir / REDUCED_MODEL)
        net.export(str(out_dir / SAVED_MODEL), verbose=False)
        custom = custom_layers(net)
        doc["exports"] = {
            "keras": REDUCED_MODEL,
            "saved_model": SAVED_MODEL,
            # Keras's own layers and ops: loads without epsresnet_tf. A gate kind registered
            # from outside the package keeps its layer, and then needs that code.
            "keras_standalone": not custom,
            "custom_layers": custom,
            "tflite": None,
        }
        if tflite:
            size = write_tflite(net, out_dir / REDUCED_TFLITE, saved_model=out_dir / SAVED_MODEL)
            path = out_dir / REDUCED_TFLITE
            check = check_tflite(path, net, iter_images(check_data))
            alone = check_tflite(
                path, net, iter_images(rebatched(check_data, CLIENT_BATCH, client_images))
            )
            doc["exports"]["tflite"] = {
                "file": REDUCED_TFLITE,
                "bytes": size,
                **check,
                "passed_at_run_batch": check["passed"],
                "passed": check["passed"] and alone["passed"],
                "batch_1": alone,
            }
    (out_dir / CERTIFICATE).write_text(jsonsafe.dumps(doc, indent=2) + "\n")
