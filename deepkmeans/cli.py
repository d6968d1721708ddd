"""Command-line interface: argument parsing only; every verb calls the Python API."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from deepkmeans.errors import DeepKMeansError, PlanWarning

if TYPE_CHECKING:
    from deepkmeans.config import RunConfig
    from deepkmeans.export import OnnxExport
    from deepkmeans.sweep import SweepPoint

DESCRIPTION = """Compress CNNs by k-means weight sharing of filter rows (Deep k-Means, ICML 2018).

Typical flow:  deepkmeans run                       # whole pipeline, default LeNet-5-Caffe on MNIST
               deepkmeans train -o dense.ckpt       # or stage by stage
               deepkmeans retrain dense.ckpt -o retrained.ckpt
               deepkmeans compress retrained.ckpt -o model.dkm
               deepkmeans evaluate model.dkm
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML run config (default: built-in LeNet-5-Caffe / MNIST)")
    p.add_argument("--data-dir", help="dataset directory (MNIST IDX files or cifar-10-batches-py)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default from config: auto)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepkmeans", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from deepkmeans import __version__

    parser.add_argument("--version", action="version", version=f"deepkmeans {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="the whole pipeline on a config (default: LeNet-5-Caffe on MNIST)")
    p.add_argument("config_file", nargs="?", metavar="CONFIG", help="YAML run config")
    p.add_argument("--quick", action="store_true", help="smoke run: small data subset, 1 epoch per stage")
    p.add_argument("--out-dir", help="run folder (default from config)")
    p.add_argument("--data-dir", help="dataset directory (MNIST IDX files or cifar-10-batches-py)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("train", help="pre-train the config's model (resumes if the checkpoint exists)")
    _common(p)
    p.add_argument("-o", "--output", default="dense.ckpt", help="checkpoint path (default: dense.ckpt)")
    p.add_argument("--epochs", type=int, help="override train.epochs")

    p = sub.add_parser("retrain", help="Deep k-Means re-training of a checkpoint with the k-means regularizer")
    p.add_argument("checkpoint", help="pre-trained checkpoint")
    _common(p)
    p.add_argument("-o", "--output", default="retrained.ckpt", help="checkpoint path (default: retrained.ckpt)")
    p.add_argument("--method", choices=["kmeans", "spectral", "none"], help="override retrain.method")
    p.add_argument("--epochs", type=int, help="override retrain.epochs")
    p.add_argument("--lam", type=float, help="override retrain.lam")

    p = sub.add_parser("compress", help="weight-share a checkpoint and write a compressed file")
    p.add_argument("checkpoint", help="checkpoint to compress")
    p.add_argument("--config", help="YAML run config with compress.layers (default: built-in)")
    p.add_argument("-o", "--output", default="model.dkm", help="compressed file (default: model.dkm)")

    p = sub.add_parser("tune", help="choose per-layer K / p / d for a size target on validation data")
    p.add_argument("checkpoint", help="pre-trained checkpoint")
    _common(p)
    p.add_argument("--target-cr", type=float, help="paper-accounting compression ratio to reach")
    p.add_argument("--max-drop", type=float, help="largest validation accuracy drop allowed, in points")
    p.add_argument("--validation", type=int, help="last training images to validate on (default: config's, else 5000)")
    p.add_argument(
        "--widths", type=int, nargs="+", choices=[32, 16, 8], help="bits of stored centers and bias (default: 32 8)"
    )
    p.add_argument("--betas", type=float, nargs="+", help="rate-aware assignment weights to try (default: 0)")
    p.add_argument("-o", "--output", default="tuned.yaml", help="run config to write (default: tuned.yaml)")

    p = sub.add_parser("finetune", help="fine-tune the centers of a compressed file (same file size)")
    p.add_argument("file", help="compressed file (.dkm)")
    _common(p)
    p.add_argument("--epochs", type=int, help="override finetune.epochs (default from config, at least 1)")
    p.add_argument("--lr", type=float, help="override finetune.lr")
    p.add_argument("-o", "--output", default="finetuned.dkm", help="compressed file to write (default: finetuned.dkm)")

    p = sub.add_parser("evaluate", help="test accuracy and per-layer compression table of a file or checkpoint")
    p.add_argument("file", help="compressed file (.dkm) or checkpoint")
    p.add_argument("--data-dir", help="dataset directory")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p = sub.add_parser("energy", help="row-stationary (Eyeriss-like) energy estimate, dense vs weight-shared")
    p.add_argument("file", nargs="?", help="compressed file (.dkm) or checkpoint")
    p.add_argument("--model", help="estimate a built-in model's dense energy instead of a file")
    p.add_argument("--batch", type=int, default=1, help="images per inference batch (default: 1)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--plot", help="write a stacked-bar PNG of the breakdown to this path")

    p = sub.add_parser("sweep", help="accuracy vs compression ratio over a grid of K / p scalings, plotted")
    p.add_argument("checkpoint", help="checkpoint (pre-trained or re-trained) to compress at every grid point")
    _common(p)
    p.add_argument("--out-dir", default="sweep", help="where sweep.json, sweep.md and sweep.png go (default: sweep)")
    p.add_argument("--scales", default="0.25,0.5,1,2,4", help="K multipliers (default: 0.25,0.5,1,2,4)")
    p.add_argument("--p-offsets", default="-0.2,-0.1,0.05", help="sparsity p shifts (default: -0.2,-0.1,0.05)")
    p.add_argument("--runs", nargs="*", default=[], metavar="RUN_DIR", help="add the models of these run folders")

    p = sub.add_parser("export", help="export a compressed file to ONNX, shared layers kept compressed")
    p.add_argument("file", help="compressed file (.dkm) or checkpoint of a built-in architecture")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="output format (default: onnx)")
    p.add_argument("-o", "--output", default="model.onnx", help="output file (default: model.onnx)")
    p.add_argument("--dense", action="store_true", help="plain dense weights, for runtimes that need them")

    p = sub.add_parser(
        "import", help="make a checkpoint the other verbs take from a state dict or a third party's weights"
    )
    p.add_argument("source", help="a .safetensors / torch.save state dict, or known weights: ccexam_mnist")
    p.add_argument("-o", "--output", default="imported.ckpt", help="output checkpoint (default: imported.ckpt)")
    p.add_argument("--model", help="its architecture, one of the built-in models (not needed for known weights)")
    p.add_argument("--dataset", help="the data set it was trained on (default: the architecture's)")

    p = sub.add_parser("report", help="(re)build report.md and its plots from a run folder")
    p.add_argument("run_dir", help="folder written by `deepkmeans run`")
    return parser


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DeepKMeansError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def _config(args: argparse.Namespace) -> RunConfig:
    """The run config from --config / CONFIG (or the built-in default), with CLI overrides applied."""
    from deepkmeans.config import load_config

    cfg = load_config(getattr(args, "config", None) or getattr(args, "config_file", None))
    overrides = {k: getattr(args, k, None) for k in ("data_dir", "device", "out_dir")}
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def _with(where: str, section: object, **overrides: object) -> object:
    """``section`` with the overrides that were given on the command line (validated by the config)."""
    from deepkmeans.errors import ConfigError

    try:
        return replace(section, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc}") from None


def cmd_run(args: argparse.Namespace) -> None:
    from deepkmeans.job.run import run

    run(_config(args), quick=args.quick, progress=False if args.no_progress else None)


def cmd_train(args: argparse.Namespace) -> None:
    from deepkmeans.job.commands import train_checkpoint

    cfg = _config(args)
    cfg = replace(cfg, train=_with("train", cfg.train, epochs=args.epochs))
    train_checkpoint(cfg, args.output)
    print(f"wrote {args.output}")


def cmd_retrain(args: argparse.Namespace) -> None:
    from deepkmeans.job.commands import retrain_checkpoint

    cfg = _config(args)
    cfg = replace(cfg, retrain=_with("retrain", cfg.retrain, method=args.method, epochs=args.epochs, lam=args.lam))
    retrain_checkpoint(args.checkpoint, cfg, args.output)
    print(f"wrote {args.output}")


def cmd_compress(args: argparse.Namespace) -> None:
    from deepkmeans.job.commands import compress_checkpoint
    from deepkmeans.report.tables import layer_table, ratio_summary

    accounting = compress_checkpoint(args.checkpoint, _config(args), args.output)
    print(layer_table(accounting))
    print(ratio_summary(accounting))
    print(f"wrote {args.output} ({accounting.file_bytes} bytes)")


def cmd_tune(args: argparse.Namespace) -> None:
    from deepkmeans.job.commands import tune_checkpoint
    from deepkmeans.tuning import BETAS, WIDTHS, Grid

    cfg = _config(args)
    validation = args.validation or cfg.validation or 5000
    if args.betas and min(args.betas) < 0:
        raise DeepKMeansError(f"--betas must be >= 0, got {min(args.betas)}")
    grid = Grid(widths=tuple(args.widths or WIDTHS), betas=tuple(args.betas or BETAS))
    result = tune_checkpoint(args.checkpoint, cfg, args.output, args.target_cr, args.max_drop, validation, grid)
    print(f"per-layer choice (validation: the last {validation} training images):")
    for name, c in result.chosen.items():
        what = "dense" if c.spec is None else f"K={c.spec.K} p={c.spec.p:g} d={c.spec.d} {c.spec.bits}-bit"
        what += f" beta={c.spec.beta:g}" if c.spec is not None and c.spec.beta else ""
        alone = (
            f"val loss with this layer alone shared {c.val_loss:.4f} (dense {result.candidates[name][0].val_loss:.4f})"
        )
        print(f"  {name:<20} {what:<22} {c.bits:>10.0f} bits  {alone}")
    print(
        f"all together: paper CR {result.paper_cr:.1f}x (target {result.target_cr:.1f}x), validation accuracy"
        f" {100 * result.val_acc:.2f}% (dense {100 * result.dense_val_acc:.2f}%), {result.seconds:.0f}s"
    )
    print(f"wrote {args.output} and its sensitivity table {Path(args.output).with_suffix('.sensitivity.md')}")


def cmd_finetune(args: argparse.Namespace) -> None:
    from deepkmeans.job.commands import finetune_file

    cfg = _config(args)
    epochs = args.epochs if args.epochs is not None else max(cfg.finetune.epochs, 1)
    cfg = replace(cfg, finetune=_with("finetune", cfg.finetune, epochs=epochs, lr=args.lr))
    result = finetune_file(args.file, cfg, args.output)
    for label, m in (("before", result.before), ("after", result.after)):
        print(f"  {label:<7} test accuracy {100 * m.test_acc:.2f}%  paper CR {m.paper_cr:.1f}x  {m.file_bytes} bytes")
    print(f"wrote {args.output}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from deepkmeans.job.commands import evaluate_file
    from deepkmeans.report.tables import layer_table, ratio_summary

    result = evaluate_file(args.file, args.data_dir, args.device)
    m = result.measurement
    if args.json:
        doc = {"file": result.file, "model": result.model, "dataset": result.dataset}
        doc |= {"test_acc": m.test_acc, "test_loss": m.test_loss, "paper_cr": m.paper_cr, "file_cr": m.file_cr}
        doc |= asdict(m.accounting)
        print(json.dumps(doc, indent=2))
        return
    subject = f"{result.file}: {result.model} on {result.dataset}"
    print(f"{subject}: test accuracy {100 * m.test_acc:.2f}%, loss {m.test_loss:.4f}")
    print(layer_table(m.accounting))
    print(ratio_summary(m.accounting))


def cmd_energy(args: argparse.Namespace) -> None:
    from deepkmeans.energy import format_table, plot_breakdown, result_to_dict
    from deepkmeans.job.commands import energy_of

    result = energy_of(args.file, args.model, args.batch)
    if args.plot:
        plot_breakdown(result, args.plot)
    if args.json:
        print(json.dumps(result_to_dict(result), indent=2))
    else:
        print(format_table(result))
        if args.plot:
            print(f"wrote {args.plot}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from deepkmeans.job.commands import sweep_checkpoint

    def show(point: SweepPoint) -> None:
        where = {"dense": "dense", "K": f"K x {point.k_scale:g}", "p": f"p {point.p_offset:+g}"}.get(point.grid, "")
        print(f"  {where:<12} test accuracy {100 * point.test_acc:6.2f}%  paper CR {point.paper_cr:7.1f}x")

    scales, offsets = _floats(args.scales, "--scales"), _floats(args.p_offsets, "--p-offsets")
    path = sweep_checkpoint(args.checkpoint, _config(args), scales, offsets, args.out_dir, show, args.runs)
    print(f"wrote {path}")


def cmd_export(args: argparse.Namespace) -> None:
    from deepkmeans.job.commands import export_file

    result = export_file(args.file, args.output, args.format, args.dense)
    for layer in result.layers:
        how = f"{layer.index_bits}-bit indexes" if layer.index_bits else layer.note
        print(f"  {layer.name}: K = {layer.K} centers, {how}")
    print(f"wrote {result.path} ({result.bytes} bytes, {_exported_kind(result)})")


def _exported_kind(result: OnnxExport) -> str:
    """What the file holds: dense weights, or how many shared layers are ``Gather(centers, indexes)``."""
    if result.dense:
        return "dense weights"
    if not result.layers:
        return "dense weights: the model has no shared layer"
    total = len(result.layers)
    if result.gathered < total:
        return f"{result.gathered} of {total} shared layers as Gather(centers, indexes), the rest dense"
    return f"{total} shared layer{'s' if total > 1 else ''} as Gather(centers, indexes)"


def cmd_import(args: argparse.Namespace) -> None:
    from deepkmeans.job.commands import import_weights

    done = import_weights(args.source, args.output, args.model, args.dataset)
    print(f"{done.source}: {done.model} ({done.parameters:,} values) on {done.dataset}")
    print(f"wrote {done.path} (no training images held out: tune warns that its validation images were seen)")


def cmd_report(args: argparse.Namespace) -> None:
    from deepkmeans.report.markdown import write_report

    print(f"wrote {write_report(args.run_dir)}")


COMMANDS = {
    "run": cmd_run,
    "train": cmd_train,
    "retrain": cmd_retrain,
    "compress": cmd_compress,
    "tune": cmd_tune,
    "finetune": cmd_finetune,
    "evaluate": cmd_evaluate,
    "energy": cmd_energy,
    "sweep": cmd_sweep,
    "export": cmd_export,
    "import": cmd_import,
    "report": cmd_report,
}


def _show_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    print(f"deepkmeans: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes end in one line on stderr and exit code 2, never a traceback."""
    args = build_parser().parse_args(argv)
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", PlanWarning)  # every note shown: each run plans a layer once
            COMMANDS[args.command](args)
    except DeepKMeansError as exc:
        print(f"deepkmeans: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that cannot be read or written: the user's environment, not a bug
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"deepkmeans: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "deepkmeans: interrupted (checkpoints are saved after each epoch; rerun to resume)",
            file=sys.stderr,
        )
        return 130
    finally:
        warnings.showwarning = shown
    return 0
