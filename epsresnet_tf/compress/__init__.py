"""Certified compression (docs/semantics.md): which blocks provably contribute nothing, the reduced
standard ResNet without them, the equivalence check, the exports and the certificate.

Library API::

    certify(model, datasets, scope=None, batch_size=None) -> Certificate
        per-block verdicts "closed" / "open" / "mixed" from per-image gate values
    ema_removable(model_or_emas, threshold=EMA_THRESHOLD) -> [block ids]
        the authors' rule: the moving average of "discarded", printed with 5 significant
        digits as their log did, reads 1 (>= 0.999995)
    printed_as_authors(value) -> the monitor value as tensorpack 0.2.0's log printed it
    disagreements(certificate, ema_ids) -> {"ema_only": [...], "certificate_only": [...]}
    reduce(model, arch, build_options, removable, gates="auto", certificate=None)
        -> (reduced keras.Model, info dict)
    check_equivalence(full, reduced, dataset, tolerance=1e-5, device="cpu") -> dict
    model_size(model) -> params, parameter bytes, conv layers, layers, blocks, MACs
    compress_model(model, arch, build_options, CompressData(...), out_dir, CompressOptions(...))
    compress_run(run_dir, data_dir, out, CompressOptions(...), RunSelection(...))
        everything above + exports

The modules, one job each: certificate (verdicts, removability, the EMA rule), reduction
(the reduced net and its weights), deploy (the exported net's batch-independent gates),
check (the checks, at the run's batch and at batch 1), sizes (model_size),
rules (both rules' policies and reduced nets), document (certificate.json's content),
write (the outputs on disk), load (a run's net, moving averages and data), run (end to end).

How a gate is certified and how a kept one folds is its kind's (`epsresnet_tf.gates`):
ε-gates from per-image values, which certify both scopes (epsresnet_tf/gates/eps.py says
why); scalar gates such as k from their scalar alone.

The reduced net. A removed ε-block contributed T·F = 0 and a removed k-block g(k)·F = 0,
so dropping it changes no activation — provided the unit is then an identity (or the
group's transition). A closed unit whose shortcut still maps x (He et al.'s constant
scaling λx and gatings (1 − g(x))·x, the conv1x1 shortcut) or with BN-ReLU after the
addition is kept, and each block's entry says why (`closed_unit`). Kept blocks follow
`gates`:
  "auto" (default): a standard (ungated) pre-activation ResNet where that is exact on the
      certified data — every kept ε-gate "open" there (T = 1), every kept k-gate folded into
      the unit's last conv (g(k)·conv(x) = conv_{g(k)·W}(x)); otherwise the gates stay in
      the certified net, and the exported net decides each kept batch-scope gate once
      from its training statistics (deploy.py), so an image's answer does not depend on
      its batch.
  "sample": as "auto", the kept batch-scope gates then per image in the exported net.
  "keep": the kept blocks keep their gates (exact on every batch, also ones never seen;
      batch-scope gates still decide per batch).
  "none": always the standard ResNet; refused where that is not exact on the data.
  "plain": always the standard ResNet, also where not exact (kept ε-gates taken as T = 1):
      the authors' reduced net, the default of the EMA rule. k-gates fold; where one cannot
      fold (shared kernel), the k-gates stay.

`compress_model` builds both reduced nets — the certified one and the authors' (EMA rule) —
and reports the test error of each and the blocks only one rule removes. Every check runs
at the run's batch and at batch 1 (check.CLIENT_BATCH): the equivalence of the certified
net (the proof), the deployed net alone against in a batch, and the TFLite file.

The exports (epsresnet_tf/exports.py) are the exported rule's net in Keras's own layers:
reduced.keras loads with `keras.models.load_model` in a Python without this package
(certificate.json's "exports" names any layer left that needs other code), the SavedModel
with TensorFlow alone, and with `tflite` a TFLite flatbuffer checked for the same top-1 on
the check data.
"""

from epsresnet_tf.compress.certificate import (
    EMA_DIGITS,
    EMA_THRESHOLD,
    Certificate,
    certify,
    closed_unit,
    disagreements,
    ema_removable,
    printed_as_authors,
)
from epsresnet_tf.compress.check import (
    CLIENT_BATCH,
    TOLERANCE,
    check_equivalence,
    logits_of,
    rebatched,
)
from epsresnet_tf.compress.deploy import DEPLOYS, deploy
from epsresnet_tf.compress.document import SCOPE_NOTE
from epsresnet_tf.compress.load import RunSelection, load_epoch, run_datasets
from epsresnet_tf.compress.reduction import GATE_POLICIES, block_layout, reduce
from epsresnet_tf.compress.rules import RULES
from epsresnet_tf.compress.run import CompressData, CompressOptions, compress_model, compress_run
from epsresnet_tf.compress.sizes import model_size
from epsresnet_tf.compress.write import OUTPUT_NAMES

__all__ = [
    "CLIENT_BATCH",
    "DEPLOYS",
    "EMA_DIGITS",
    "EMA_THRESHOLD",
    "GATE_POLICIES",
    "OUTPUT_NAMES",
    "RULES",
    "SCOPE_NOTE",
    "TOLERANCE",
    "Certificate",
    "CompressData",
    "CompressOptions",
    "RunSelection",
    "block_layout",
    "certify",
    "check_equivalence",
    "closed_unit",
    "compress_model",
    "compress_run",
    "deploy",
    "disagreements",
    "ema_removable",
    "load_epoch",
    "logits_of",
    "model_size",
    "printed_as_authors",
    "rebatched",
    "reduce",
    "run_datasets",
]
