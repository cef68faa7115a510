"""`epsresnet compress RUN_DIR`: its options, and the summary it prints (epsresnet_tf.compress
does the work)."""

import sys

from epsresnet_tf.cli.options import add_command, data_dir, option
from epsresnet_tf.compress import (
    DEPLOYS,
    EMA_THRESHOLD,
    GATE_POLICIES,
    RULES,
    CompressOptions,
    RunSelection,
    compress_run,
)


def _pct(v):
    """A fraction as a percentage with two decimals, or "n/a"."""
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _print_summary(doc):
    """Print what was removed, the sizes, whether the rules agree and the test errors."""
    eq = doc["equivalence"]
    b, a = doc["before"], doc["after"]
    where = "final model" if doc.get("epoch") is None else f"epoch {doc['epoch']}"
    print(
        f"{where}, rule {doc['rule']}: removed {doc['removed_count']} of "
        f"{doc['blocks_before']} blocks ({', '.join(doc['removed']) or 'none'}); "
        f"reduced net gates: {doc['reduced_gates']}"
    )
    for bid, v in doc["blocks"].items():
        if v["verdict"] == "closed" and not v.get("removable", True):
            print(f"{bid}: {v['reason']}")
    print(
        f"params {b['trainable_params']:,} -> {a['trainable_params']:,}; layers {b['layers']} -> "
        f"{a['layers']}; MACs {b['macs']:,} -> {a['macs']:,}"
    )
    dis = doc["disagreements"]
    if dis["ema_only"] or dis["certificate_only"]:
        print(
            f"the rules disagree: only the authors' EMA rule removes "
            f"{', '.join(dis['ema_only']) or 'none'}; only the certificate removes "
            f"{', '.join(dis['certificate_only']) or 'none'}"
        )
    else:
        print("the rules agree: both remove the same blocks")
    r = doc["rules"]
    print(
        f"test error on {eq['images']} images: trained {_pct(eq.get('error_full'))}; "
        + "; ".join(
            f"{RULES[n]} ({r[n]['removed_count']} removed) {_pct(r[n]['test_error'])}"
            for n in RULES
        )
    )


def _report_equivalence(doc):
    """Print the equivalence check's verdict (at the run's batch and at batch 1); the exit
    status (1: a certified net differs at either)."""
    eq = doc["equivalence"]
    one = eq["batch_1"]
    print(
        f"equivalence on {eq['images']} test images in the run's batches and {one['images']} "
        f"one at a time: max |logit diff| {eq['max_abs_logit_diff']:.3g} and "
        f"{one['max_abs_logit_diff']:.3g} ({'passed' if eq['passed'] else 'FAILED'}, "
        f"tolerance {eq['tolerance']:g})"
    )
    if eq["passed_at_run_batch"] != one["passed"]:
        where = "in the run's batches" if eq["passed_at_run_batch"] else "one image at a time"
        print(f"the check passes only {where}", file=sys.stderr)
    if eq["passed"]:
        return 0
    if doc["rule"] == "ema":  # expected: the authors' rule is not a proof
        print(
            "the authors' EMA rule changed predictions (it is not certified); "
            "the difference is in certificate.json"
        )
        return 0
    print(
        "the reduced net does not reproduce the trained one; exports kept for inspection",
        file=sys.stderr,
    )
    return 1


def _at_both(check):
    """A check at the run's batch and at batch 1, in words."""
    one = check["batch_1"]
    return (
        f"same top-1 on {check['same_top1']} of {check['images']} test images in the run's "
        f"batches and {one['same_top1']} of {one['images']} one at a time, max |logit diff| "
        f"{max(check['max_abs_logit_diff'], one['max_abs_logit_diff']):.3g}"
    )


def _report_deployment(doc):
    """What the exported net does with its kept batch-dependent gates, its test error alone
    and in a batch beside the gated net's; the exit status (1: it is not batch-independent
    although deployed to be)."""
    dep = doc["deployment"]
    decided = [d["decision"] for d in dep["gates"].values()]
    if dep["policy"] != "keep" and decided:
        counts = ", ".join(f"{decided.count(k)} {k}" for k in sorted(set(decided)))
        print(
            f"deployment: {len(decided)} kept batch-scope gates "
            f"{DEPLOYS[dep['policy']]} ({counts}), so an image's answer does not depend on "
            f"its batch; reduced net gates: {doc['reduced_gates']}"
        )
    for bid, d in dep["gates"].items():  # the gates whose decision is news
        if d["verdict"] != "open" or d["decision"] != "open":
            print(f"deployed {bid} ({d['verdict']} on the certified data): {d['why']}")
    err, gated = dep["test_error"], dep["gated_test_error"]
    if dep["gates"]:
        print(
            f"deployed net: test error {_pct(err['batch_1'])} one image at a time, "
            f"{_pct(err['run_batch'])} in the run's batches; the gated net "
            f"{_pct(gated['batch_1'])} and {_pct(gated['run_batch'])}"
        )
    alone = dep["alone_vs_in_batch"]
    if dep["batch_independent"]:
        return 0
    if dep["policy"] == "keep":
        print(
            f"reduced.keras keeps batch-scope gates (--gates keep): an image's answer depends "
            f"on its batch (top-1 alone differs on {alone['images'] - alone['same_top1']} of "
            f"{alone['images']} test images)"
        )
        return 0
    print(
        f"the exported net answers differently alone than in a batch on "
        f"{alone['images'] - alone['same_top1']} of {alone['images']} test images; "
        "kept for inspection, do not ship it",
        file=sys.stderr,
    )
    return 1


def _report_file(entry, what):
    """One line on an exported file checked against its Keras net (TFLite, ONNX); the exit
    status (1: its top-1 differs at the run's batch or at batch 1)."""
    if not entry:
        return 0
    line = f"{entry['file']}: {_at_both(entry)}"
    if entry["passed"]:
        print(line)
        return 0
    print(f"{line}: the {what} net disagrees; kept for inspection, do not ship it", file=sys.stderr)
    return 1


def _report_exports(doc):
    """The lines on the TFLite and ONNX files and the raw-image entry; the exit status (1:
    one of them disagrees with the net it was made from)."""
    exports = doc.get("exports") or {}
    raw = exports.get("raw")
    status = [_report_file(exports.get(k), k.upper()) for k in ("tflite", "onnx")]
    if raw:
        line = (
            f"{raw['keras']} and the SavedModel's {raw['saved_model_signature']} take "
            f"{raw['input']}: the pipeline's top-1 on {raw['same_top1']} of {raw['images']} "
            "test images"
        )
        if raw["passed"]:
            print(line)
        else:
            print(f"{line}: the raw-image entry disagrees; kept for inspection", file=sys.stderr)
        status.append(0 if raw["passed"] else 1)
        status += [_report_file(raw.get(k), f"raw {k.upper()}") for k in ("tflite", "onnx")]
    return max(status)


def _cli(args):
    """`epsresnet compress`: compress the run, print the summary; the exit status."""
    options = CompressOptions(
        rule=args.rule,
        gates=args.gates,
        ema_threshold=args.ema_threshold,
        force=args.force,
        tflite=args.tflite,
        onnx=args.onnx,
        client_images=args.client_images,
    )
    select = RunSelection(
        epoch=args.epoch,
        ema_from=args.ema_from,
        ema_epoch=args.ema_epoch,
        splits=tuple(args.splits.split(",")),
        max_batches=args.max_batches,
    )
    doc = compress_run(args.run_dir, args.data_dir, args.out, options, select)
    _print_summary(doc)
    return max(_report_equivalence(doc), _report_deployment(doc), _report_exports(doc))


#: The compress subcommand's options after RUN_DIR and --data-dir: (flags, add_argument
#: keywords), in the order --help lists them.
_OPTIONS = [
    (("--out",), dict(default=None, help="output folder (default: RUN_DIR/reduced)")),
    (
        ("--rule",),
        dict(
            choices=("certificate", "ema"),
            default="certificate",
            help="certificate (proof on the data, default) or ema (the authors' rule: "
            "the moving average printed with 5 significant digits reads 1); "
            "both nets are built and their test errors reported",
        ),
    ),
    (
        ("--epoch",),
        dict(
            type=int,
            default=None,
            help="compress the state at the end of this epoch (its checkpoint, kept "
            "with the config's keep_checkpoints_at / keep_checkpoints_every) "
            "instead of the final model.keras",
        ),
    ),
    (
        ("--gates",),
        dict(
            choices=GATE_POLICIES,
            default=None,
            help="gates of the kept blocks of the exported net: auto (the certificate's "
            "default: plain where exact, else each kept batch-scope ε-gate decided once "
            "from its training statistics, so an image's answer does not depend on its "
            "batch), sample (those gates per image), keep (as trained: batch-dependent), "
            "none, plain (always the standard ResNet, as the authors; the EMA rule's "
            "default)",
        ),
    ),
    (
        ("--ema-from",),
        dict(
            choices=("model", "history"),
            default="model",
            help="EMA values of the compressed net's gates, or a history.jsonl row",
        ),
    ),
    (
        ("--ema-epoch",),
        dict(type=int, default=None, help="history row (default: --epoch, else the last)"),
    ),
    (
        ("--ema-threshold",),
        dict(
            type=float,
            default=EMA_THRESHOLD,
            help=f"EMA at or above which a block counts as discarded ({EMA_THRESHOLD:g}: "
            "the authors' log printed it as 1)",
        ),
    ),
    (("--splits",), dict(default="train,test", help="splits to certify on (train,test)")),
    (
        ("--max-batches",),
        dict(
            type=int,
            default=None,
            help="certify and check on the first N batches of each split only (smoke runs)",
        ),
    ),
    (
        ("--tflite",),
        dict(
            action="store_true",
            help="also export reduced.tflite (TFLite, float) and check it gives the same "
            "top-1 as reduced.keras on the test set",
        ),
    ),
    (
        ("--onnx",),
        dict(
            action="store_true",
            help="also export reduced.onnx (and reduced-raw.onnx) through tf2onnx and check "
            "them with onnxruntime like --tflite (the onnx extra: pip install "
            "'epsresnet_tf[onnx]')",
        ),
    ),
    (
        ("--client-images",),
        dict(
            type=int,
            default=None,
            help="check at batch 1 on the first N test images only (default: all)",
        ),
    ),
    (("--force",), dict(action="store_true", help="replace existing outputs")),
]


def register(subparsers):
    """Add the `compress` subcommand to the CLI's subparsers."""
    add_command(
        subparsers,
        "compress",
        help="certify removable blocks and export the reduced standard ResNet",
        description="Certify which blocks of a trained run contribute nothing (gate 0 on every "
        "image of the training and test sets, or g(k) = 0), rebuild the net "
        "without them, check identical predictions on the test set and export "
        "RUN_DIR/reduced/{reduced.keras, saved_model/, certificate.json} (reduced.tflite "
        "with --tflite). reduced.keras holds Keras's own layers and ops only: "
        "keras.models.load_model reads it without epsresnet_tf.",
        func=_cli,
        options=[
            option("run_dir", help="run folder written by `epsresnet train`"),
            data_dir(
                "dataset root (default: the folder the run trained with, else "
                "$EPSRESNET_DATA or ./data)",
                from_run=True,
            ),
            *(option(*flags, **kwargs) for flags, kwargs in _OPTIONS),
        ],
    )
