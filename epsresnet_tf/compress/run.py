"""Compression end to end: certify, reduce by both rules, check, size and export a net
(`compress_model`), or a run folder's (`compress_run`)."""

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from epsresnet_tf import gates as G
from epsresnet_tf.compress.certificate import EMA_THRESHOLD, certify, ema_removable
from epsresnet_tf.compress.check import CLIENT_BATCH, TOLERANCE, Logits, check_at_client_batches
from epsresnet_tf.compress.deploy import deploy, deployment_doc
from epsresnet_tf.compress.document import certificate_doc
from epsresnet_tf.compress.load import (
    RunSelection,
    history_ema,
    load_weights,
    run_datasets,
    run_extra,
)
from epsresnet_tf.compress.reduction import reduce
from epsresnet_tf.compress.rules import policies, reduce_by_both_rules
from epsresnet_tf.compress.sizes import model_size
from epsresnet_tf.compress.write import OUTPUT_NAMES, RawImages, prepare_out, write_outputs
from epsresnet_tf.errors import UserError
from epsresnet_tf.gates import gate_by_block
from epsresnet_tf.outputs import staged_outputs
from epsresnet_tf.runfolder import read_run

if TYPE_CHECKING:
    import keras


@dataclasses.dataclass(frozen=True)
class CompressOptions:
    """How to compress. rule: "certificate" (default) or "ema" (the authors' moving-average
    rule; the check then says whether it was safe); gates: the exported net's gate policy
    (None: "auto" for the certificate, "plain" — the authors' standard ResNet — for the EMA
    rule); scope: "batch" or "sample" (None: the gates' own); ema_threshold: the EMA rule's;
    tolerance and check_device: the equivalence check's; client_images: how many test
    images the checks at batch 1 see (None: all); force: replace earlier outputs;
    export: write reduced.keras and the SavedModel; tflite: and reduced.tflite, checked;
    onnx: and reduced.onnx (tf2onnx), checked with onnxruntime."""

    rule: str = "certificate"
    gates: str | None = None
    scope: str | None = None
    ema_threshold: float = EMA_THRESHOLD
    tolerance: float = TOLERANCE
    check_device: str = "cpu"
    client_images: int | None = None
    force: bool = False
    export: bool = True
    tflite: bool = False
    onnx: bool = False


@dataclasses.dataclass(frozen=True)
class CompressData:
    """What a net is compressed on: `certify` {split name: batches} in the order the run
    sees them, `check` the (test) batches the check and the test errors run on,
    `batch_size` the run's (recorded in the certificate), `ema` the moving averages the
    EMA rule reads ({block id: ema}, e.g. a history row's "blocks"; None: the net's gates'),
    `raw` the check's images as the dataset stores them and how training normalised them
    (write.RawImages; None: no raw-image exports)."""

    certify: dict
    check: Any
    batch_size: int | None = None
    ema: Any = None
    raw: Any = None


def compress_model(
    model: "keras.Model",
    arch: str,
    build_options: dict,
    data: CompressData,
    out_dir: "str | Path",
    options: CompressOptions | None = None,
    extra: dict | None = None,
) -> dict[str, Any]:
    """Certify, reduce, check, export. Writes `out_dir/{reduced.keras, saved_model/,
    certificate.json}` (options.tflite: and reduced.tflite, checked on `data.check`),
    returns the certificate dict with `extra` added.

    Both rules' reduced nets are built and run on `data.check` (the test split): the
    document's "rules" holds each one's removals, layout and test error (labelled data),
    "disagreements" the blocks only one rule removes. The exported net is options.rule's,
    with options.gates as its policy; the other rule's net gets its default."""
    options = options or CompressOptions()
    out_dir = Path(out_dir)
    policy = policies(options.rule, options.gates)
    prepare_out(out_dir, options.force)
    cert = certify(model, data.certify, scope=options.scope, batch_size=data.batch_size)
    ema_ids = ema_removable(model if data.ema is None else data.ema, options.ema_threshold)
    removable = {"certificate": cert.removable, "ema": ema_ids}
    logits = Logits(data.check, options.check_device, options.client_images)
    reductions = reduce_by_both_rules(
        options.rule,
        removable,
        policy,
        lambda ids, gates: reduce(model, arch, build_options, ids, gates=gates, certificate=cert),
        lambda net: check_at_client_batches(model, net, logits, options.tolerance),
    )
    rule = options.rule
    deployment = deploy(
        model,
        arch,
        build_options,
        removable[rule],
        (reductions.nets[rule], reductions.infos[rule]),
        cert,
        policy[rule],
    )
    full_inference, _ = reduce(model, arch, build_options, [], gates="keep", certificate=cert)
    sizes = model_size(full_inference), model_size(deployment.reduced or reductions.nets[rule])
    doc = certificate_doc(arch, cert, reductions, options.ema_threshold, sizes, deployment.info)
    doc["deployment"] = deployment_doc(deployment, logits, reductions.exported, CLIENT_BATCH)
    doc.update(extra or {})
    # Built beside the old outputs and swapped in at the end: a failure or a kill while
    # exporting leaves the previous reduced/ whole.
    with staged_outputs(out_dir, owned=OUTPUT_NAMES) as stage:
        net = (deployment.net or reductions.exported) if options.export else None
        files = dict(tflite=options.tflite, onnx=options.onnx, raw=data.raw)
        write_outputs(stage, net, doc, data.check, options.client_images, **files)
    return doc


def compress_run(
    run_dir: "str | Path",
    data_dir: "str | Path | None" = None,
    out: "str | Path | None" = None,
    options: CompressOptions | None = None,
    select: RunSelection | None = None,
) -> dict[str, Any]:
    """Compress a run folder: the final net (model.keras), or with `select.epoch` the state
    at the end of that epoch (its checkpoint's weights and moving averages; the history row
    of that epoch for ema_from="history"). `data_dir` None: the folder the run trained
    with; `out` None: RUN_DIR/reduced."""
    select = select or RunSelection()
    run = read_run(run_dir)
    model, state, ema_epoch = load_weights(run, select.epoch, select.ema_epoch)
    if not gate_by_block(model):
        raise UserError(
            f"{run.model_path} has no gates: only gated nets have removable "
            f"blocks (train with gate {' or '.join(G.gate_kinds())})"
        )
    select = dataclasses.replace(select, ema_epoch=ema_epoch)
    ema = history_ema(run, ema_epoch) if select.ema_from == "history" else None
    data = run_datasets(run, data_dir, select.splits, select.max_batches)
    check = data.get("test") or run_datasets(run, data_dir, ("test",), select.max_batches)["test"]
    return compress_model(
        model,
        run.arch,
        run.build_options,
        CompressData(data, check, batch_size=run.batch_size, ema=ema, raw=RawImages.of(check)),
        Path(out) if out else run.folder.reduced,
        options,
        extra=run_extra(run, select, state),
    )
