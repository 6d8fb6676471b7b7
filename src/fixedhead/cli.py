"""`fixedhead` command: thin subcommands over the library. Bad input -> one line on stderr, exit 2."""

from __future__ import annotations

import argparse
import codecs
import io
import json
import os
import sys
from pathlib import Path

from .errors import UserError, one_line, shown
from .runs import OUTCOME_RULES, CompareDir, RunDir, SweepDir

# flag dest -> config key; a flag left unset does not override the config file.
TRAIN_FLAGS = {
    "data": "data.name", "data_dir": "data.data_dir", "arch": "model.arch", "similarity": "model.similarity",
    "fixed": "model.fixed", "scale": "model.scale", "learn_scale": "model.learn_scale", "init": "model.init",
    "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.lr", "seed": "seed",
    "device": "train.device", "bf16": "train.bf16", "channels_last": "train.channels_last",
    "sync_bn": "train.sync_bn", "compile": "train.compile", "log": "train.log", "pretrained": "model.pretrained",
}


def _seed(text: str) -> int:
    """A --seed flag's value: an integer in the range a config's seed has."""
    from .config import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"takes an integer in 0..{MAX_SEED}, got {shown(text)}")
    return value


def _positive_float(text: str) -> float:
    """A rate flag's value: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"takes a number above 0, got {shown(text)}")
    return value


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UserError(f"{message} (see {self.prog} --help)")


def _add_train(sub, flags: bool = True):
    """The train command; its config flags (whose help lists the registries' words, which loads torch)
    only when `flags`, i.e. when the command line is a train command."""
    p = sub.add_parser("train", help="train one run into --out")
    if flags:
        _add_train_flags(p)
    p.add_argument("--config", help="YAML file of config keys, or an experiment file of one run (a path, or a "
                   "shipped name such as speed/cpu-fast)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _add_train_flags(p) -> None:
    from .config import Config, accepted, fields, flat

    defaults, specs = flat(Config()), fields()
    for dest, key in TRAIN_FLAGS.items():
        default, words = defaults[key], specs[key].metadata["words"]
        text = specs[key].metadata["help"] + (f" [{accepted(key)}]" if accepted(key) else "")
        flag = "--" + dest.replace("_", "-")
        if isinstance(default, bool) and words:  # --bf16 alone is true; --bf16 auto|false as written
            p.add_argument(flag, nargs="?", const=True, default=None, metavar="|".join(("true", "false", *words)),
                           help=f"{text}; the flag alone is true (default: {'on' if default else 'off'})")
        elif isinstance(default, bool):
            p.add_argument(flag, action="store_true", default=None, help=f"{text} (default: {'on' if default else 'off'})")
        else:
            kind = type(default) if isinstance(default, (int, float)) else str
            p.add_argument(flag, type=kind, help=f"{text} (default: {default})")


def _config_file(name: str) -> dict:
    """--config: a YAML file of config keys, or an experiment file of one run (a path, or a shipped name such
    as speed/cpu-fast, as sweep takes them), whose base and variant are the layer."""
    from pathlib import Path

    from .config import config_tree
    from .experiments.experiment_file import is_experiment, recipe, shipped
    from .files import read_yaml

    if not Path(name).exists() and shipped(name) is not None:
        return recipe(name)
    tree = read_yaml(name, "config file")
    return recipe(name) if is_experiment(tree) else config_tree(tree, name)


def _train(args) -> int:
    from . import data
    from .config import make_config, parse_overrides, saved_config, to_dict
    from .training.fit import fit

    flags = {key: getattr(args, dest) for dest, key in TRAIN_FLAGS.items() if getattr(args, dest) is not None}
    file_layer = _config_file(args.config) if args.config else {}
    run = RunDir(args.out)
    # --resume continues the saved config; flags on top of it must agree with it (fit checks).
    saved = {}
    if args.resume and run.has_checkpoint():
        saved = to_dict(saved_config(run.read_config(), run.config_path, run.version()))
    config = make_config(saved, file_layer, flags, parse_overrides(args.set))
    if args.data_dir is not None and not data.reads_files(config.data.name):
        raise UserError(f"--data-dir {shown(args.data_dir)} is given but {config.data.name} reads no files; say which "
                        "dataset that folder holds with --data (e.g. imagefolder, cifar10, fashion-mnist)")
    if config.data.name == "imagefolder" and config.data.data_dir and int(os.environ.get("RANK", "0")) == 0:
        root = Path(config.data.data_dir)
        if (root / "train").is_dir() and data.imagefolder_split(root, "test").name == "val":
            print(f"note: {root} has no test/; its val/ is the test split (scored once, at the end; validation is "
                  "held out of train/ by data.val_fraction)", file=sys.stderr)
    from .training.distributed import teardown

    try:
        final = fit(config, args.out, resume=args.resume, overwrite=args.overwrite, verbose=not args.quiet)
    finally:
        teardown()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(f"test accuracy {final['test_acc']:.4f} ({final['num_test']} images, epoch {final['selected_epoch']}, "
          f"{final['train_time_s']:.0f} s training) -> {args.out}")
    if final["status"] in OUTCOME_RULES:
        losses, end = final["train_losses"], final["train_loss_end"]
        said = {"diverged": "diverged", "at_chance": "ended at chance"}[final["status"]]
        print(f"note: the run {said} ({OUTCOME_RULES[final['status']]}): its mean "
              f"training loss went from {losses[0]:.4g} in the first epoch to {losses[-1]:.4g} in the last"
              + (f", {end:.4g} over the last quarter" if end is not None else "")
              + f"; reports count it as {final['status']}, beside the mean of the runs that trained",
              file=sys.stderr)
    return 0


def _score(args) -> int:
    from .evaluation.trained import evaluate_run

    result = evaluate_run(args.run_dir, split=args.split, data_dir=args.data_dir, device=args.device, tta=args.tta)
    tta = "" if result["tta"] == "none" else f", test-time augmentation {result['tta']}"
    print(json.dumps(result) if args.json else
          f"{result['split']} accuracy {result['acc']:.4f}"
          + (f", top-5 {result['top5_acc']:.4f}" if "top5_acc" in result else "")
          + f" ({result['count']} images{tta})")
    return 0


def _export(args) -> int:
    from .evaluation.deploy import export_run

    print(f"wrote {export_run(args.run_dir, args.format, args.out)} (and its classes and input in a .json beside it)")
    return 0


def _predict(args) -> int:
    from .evaluation.deploy import MAX_PREDICT, predict_files

    if not 1 <= args.top_k <= 1000 or len(args.images) > MAX_PREDICT:
        raise UserError(f"predict takes 1 to {MAX_PREDICT:,} images and --top-k from 1 to 1,000, got "
                        f"{len(args.images)} images and --top-k {args.top_k}")
    results = predict_files(args.run_dir, args.images, args.top_k)
    for result in results:
        print(json.dumps(result) if args.json else result["image"] + "  " + ", ".join(
            f"{entry['class']} {entry['probability']:.3f}" for entry in result["top"]))
    return 0


def _demo(args) -> int:
    from .config import parse_overrides
    from .experiments.demo import demo, results_table

    summary = demo(args.out, data=args.data, data_dir=args.data_dir, seed=args.seed,
                   overrides=parse_overrides(args.set), overwrite=args.overwrite)
    print(f"\n{summary['title']}:\n")
    print(results_table(summary["results"]))
    print("\n" + "\n".join(summary["reading"]))
    folder = SweepDir(args.out)
    print(f"\nruns, {folder.summary_path.name} and {folder.demo_path.name} in {args.out}")
    return 0


def _data(args) -> int:
    from . import data
    from .data.download import download

    if args.action == "download":
        root = download(args.name, args.data_dir)
        print(f"{args.name} is in {root}")
    else:
        from .config import make_config

        config = make_config({"data.name": args.name, "data.num_classes": args.num_classes,  # the bounds a run has
                              "data.imbalance": args.imbalance, "data.imbalance_type": args.imbalance_type})
        print(json.dumps(data.info(args.name, args.data_dir, args.variant, args.num_classes, config.data), indent=2))
    return 0


def _analyze(args) -> int:
    from .evaluation.analysis import SUMMARY_KEYS, analyze

    result = analyze(args.run_dir, split=args.split, device=args.device, tsne=args.tsne, cluster=args.cluster)
    if result["unfinished"]:
        print(f"note: {args.run_dir} is unfinished; analysed its {result['source']}", file=sys.stderr)
    for key in ("num_images", *SUMMARY_KEYS, "spearman_p", "num_pairs"):
        print(f"{key:24} {result[key]:.4g}" if isinstance(result[key], float) else f"{key:24} {result[key]}")
    print(f"{RunDir(args.run_dir).analysis_path} and {len(result['figures'])} figure files beside it")
    return 0


def _compare(args) -> int:
    from .evaluation.analysis import compare

    result = compare(args.run_dirs, out=args.out, split=args.split, device=args.device)
    print(result["table"])
    if args.out:
        print(f"\n{CompareDir(args.out).table_path.name} and class-vector heatmaps in {args.out}")
    return 0


def _add_analysis(sub):
    p = sub.add_parser("analyze", help="the paper's measurements and figures for one run")
    p.add_argument("run_dir")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--device", default="auto")
    p.add_argument("--tsne", action="store_true", help="also a t-SNE picture of the features (slower)")
    p.add_argument("--cluster", action="store_true", help="order the heatmap by hierarchical clustering")
    p = sub.add_parser("compare", help="several runs side by side")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", help="folder for the table (Markdown) and the heatmap figure")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--device", default="auto")


def _severities(text: str) -> list[int]:
    try:
        if "-" in text:
            low, high = (int(v) for v in text.split("-"))
            values = list(range(low, high + 1)) if 1 <= low <= high <= 5 else []  # bounded before any list is made
        else:
            parts = text.split(",", 5)  # a sixth part means too many: nothing longer is ever split off
            values = [int(v) for v in parts] if len(parts) <= 5 else []
    except ValueError:
        values = []
    if not values or not all(1 <= v <= 5 for v in values):
        raise UserError(f"--severities takes a range like 1-5 or a list like 1,3,5 within 1..5, got {text!r}")
    return values


def _corruption_names(text: str) -> list[str]:
    from .evaluation.corruptions import CORRUPTIONS

    if text == "all":
        return list(CORRUPTIONS)
    if text == "none":
        return []
    names = [n.strip() for n in text.split(",")]
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise UserError(f"unknown corruption {unknown[0]!r}; choose all, none or any of: {', '.join(CORRUPTIONS)}")
    return names


def _robustness(args) -> int:
    from .evaluation.robustness import evaluate_suite, table

    result = evaluate_suite(args.run_dir, _corruption_names(args.corruptions), _severities(args.severities),
                            args.preset, args.seed, args.generalization, args.device)
    print(table(result))
    print(f"\n-> {RunDir(args.run_dir).evaluation_path}")
    return 0


def _corrupt(args) -> int:
    from .evaluation.robustness import export

    files = export(args.name, args.data_dir, args.out, args.preset, args.seed, _corruption_names(args.corruptions))
    print(f"{', '.join(files)} in {args.out}")
    return 0


def _add_robustness(sub):
    p = sub.add_parser("robustness", help="clean, corrupted and generalisation accuracy of a run (the paper's Section 4)")
    p.add_argument("run_dir")
    p.add_argument("--corruptions", default="all", help="all, none, or a comma list of corruption names")
    p.add_argument("--severities", default="1-5")
    p.add_argument("--preset", default="imagenet-c", help="imagenet-c (the paper's), cifar-c or tiny-imagenet-c")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the impulse noise")
    p.add_argument("--generalization", action="append", default=[], metavar="SPEC",
                   help="cifar10.1[:v4][@DIR] or folder:PATH (repeatable)")
    p.add_argument("--device", default="auto")
    p = sub.add_parser("corrupt", help="export a CIFAR-10-C-style corrupted copy of a test set")
    p.add_argument("name", help="dataset name")
    p.add_argument("--data-dir")
    p.add_argument("--out", required=True)
    p.add_argument("--corruptions", default="all")
    p.add_argument("--preset", default="imagenet-c")
    p.add_argument("--seed", type=_seed, default=0)


def _sweep(args) -> int:
    from .config import parse_overrides
    from .experiments.sweep import run_sweep

    sets = parse_overrides(args.set)
    if args.on != "local" and (args.devices or args.shard):
        raise UserError(f"--on {args.on} schedules every run itself; drop --devices / --shard")
    if args.on != "local" and not args.dry_run:
        summary = _on_cluster(args, sets)
    elif args.devices:
        from .experiments.sweep import run_parallel

        if args.shard or args.dry_run:
            raise UserError("--devices runs every shard itself; drop --shard / --dry-run (or use them without --devices)")
        summary = run_parallel(args.experiment, args.out, args.devices.split(","), seeds=args.seeds, sets=sets)
    else:
        summary = run_sweep(args.experiment, args.out, seeds=args.seeds, sets=sets, shard_spec=args.shard,
                            dry_run=args.dry_run)
    if args.summary:
        from .files import write_json

        write_json(args.summary, summary)
    if args.dry_run:  # the plan is the output: on stdout, one run a line, the count last
        for name, overrides in zip(summary["planned"], summary["overrides"]):
            print(f"{name}  {overrides}")
        each = (f"; each a {args.on} task of {args.cpus_per_run} CPU(s), {args.gpus_per_run} GPU(s)"
                if args.on != "local" else "")
        print(f"{len(summary['planned'])} runs planned{each}")
        if args.on != "local":
            from .experiments.cluster import estimate_plan

            print(estimate_plan(args.experiment, args.seeds, sets, args.gpu_tflops).line())
        return 0
    if summary.get("jobs") and not args.wait:
        print(f"submitted {len(summary['jobs'])} job(s): {', '.join(summary['jobs'])}; fixedhead report {args.out} "
              "when they are done")
        return 0
    busy = f", {len(summary['busy'])} in use by another process" if summary["busy"] else ""
    print(f"{len(summary['planned'])} runs: {len(summary['finished'])} trained, {len(summary['skipped'])} already "
          f"finished, {len(summary['failed'])} failed" + (f" ({', '.join(summary['failed'])})" if summary["failed"] else "")
          + busy)
    return 1 if summary["failed"] or summary["busy"] else 0


def _on_cluster(args, sets: dict) -> dict:
    from .experiments import cluster

    if not 1 <= args.cpus_per_run <= 1024 or not 0 <= args.gpus_per_run <= 64 or not 0 <= args.retries <= 100:
        raise UserError("--cpus-per-run takes 1-1024, --gpus-per-run 0-64, --retries 0-100")
    if args.on == "ray":
        return cluster.run_on_ray(args.experiment, args.out, args.seeds, sets, args.address, args.cpus_per_run,
                                  args.gpus_per_run, args.retries)
    return cluster.run_on_slurm(args.experiment, args.out, args.seeds, sets, args.partition, args.time_min,
                                int(args.gpus_per_run), args.cpus_per_run, args.parallel, args.wait)


def _report(args) -> int:
    from .experiments.report import write_report

    result = write_report(args.out_dir)
    print(result["markdown"])
    folder = SweepDir(args.out_dir)
    print(f"-> {folder.report_path}, {folder.csv_path.name}, {folder.latex_path.name} and {len(result['figures'])} "
          "figures beside it")
    return 0


def _add_sweep(sub):
    p = sub.add_parser("sweep", help="run an experiment file: grid x seeds, resumable, shardable")
    p.add_argument("experiment")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, help="number of seeds (0..n-1), overriding the file")
    p.add_argument("--shard", help="i/n: run every n-th run starting at the i-th (1 <= i <= n)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and stop")
    p.add_argument("--devices", help="comma list (e.g. cuda:0,cuda:1): one worker per device, each on its shard")
    p.add_argument("--summary", help=argparse.SUPPRESS)  # where a worker leaves its summary for --devices
    p.add_argument("--on", default="local", choices=("local", "ray", "slurm"),
                   help="where the runs train: here one after another (default), as Ray tasks, or as a Slurm job array")
    p.add_argument("--address", help="--on ray: the cluster to join (default: RAY_ADDRESS, else a local one)")
    p.add_argument("--cpus-per-run", type=int, default=1, help="--on ray/slurm: CPUs (torch threads) of each run")
    p.add_argument("--gpus-per-run", type=float, default=0, help="--on ray/slurm: GPUs of each run")
    p.add_argument("--retries", type=int, default=2, help="--on ray: retries of a run whose worker died")
    p.add_argument("--gpu-tflops", type=_positive_float, default=None, metavar="RATE",
                   help="--dry-run --on ray/slurm: the sustained GPU rate the GPU-hours estimate assumes (default 100)")
    p.add_argument("--partition", help="--on slurm: the partition")
    p.add_argument("--time-min", type=int, default=60, help="--on slurm: each job's time limit in minutes")
    p.add_argument("--parallel", type=int, default=8, help="--on slurm: jobs of the array running at once")
    p.add_argument("--no-wait", dest="wait", action="store_false", help="--on slurm: submit and return the job ids")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key in every run")
    p = sub.add_parser("report", help="tables (mean ± std, n) from a sweep's run folders")
    p.add_argument("out_dir")


def _add_data(sub):
    p = sub.add_parser("data", help="download a dataset or describe one")
    p.add_argument("action", choices=("download", "info"))
    p.add_argument("name", help="dataset name")
    p.add_argument("--data-dir", help="folder to download into / read from")
    p.add_argument("--variant", help="cifar100: fine|coarse; cifar10.1: v6|v4")
    p.add_argument("--num-classes", type=int, help="glyphs: how many classes (default 100)")
    p.add_argument("--imbalance", type=float, default=1.0, help="info: per-class training images of the "
                   "long-tailed split data.imbalance makes (before any validation hold-out)")
    p.add_argument("--imbalance-type", default="exp", help="info: exp or step")


def build_parser(argv: list | None = None) -> Parser:
    """The command line's parser; the train command's config flags only where `argv` is a train command (or
    not given), so that --version and --help answer without loading torch."""
    from .version import VERSION

    parser = Parser(prog="fixedhead", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fixedhead {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    command = next((a for a in argv if not a.startswith("-")), None) if argv is not None else "train"
    _add_train(sub, flags=command == "train")
    p = sub.add_parser("score", help="accuracy of a run's final weights on a split again (another --tta, a moved dataset)")
    p.add_argument("run_dir")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--data-dir", help="where the dataset lives now, if it moved")
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", help="test-time augmentation: none, flip, shift, flip-shift (default: the run's own)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("export", help="a run as a self-contained model: normalisation and head inside, float images "
                       "in [0, 1] -> logits (ONNX, TorchScript or safetensors)")
    p.add_argument("run_dir")
    p.add_argument("--format", default="onnx", help="onnx, torchscript or safetensors (default: onnx)")
    p.add_argument("--out", help="the file to write (default: RUN_DIR/export/); an existing file is not replaced")
    p = sub.add_parser("predict", help="the top classes of image files under a run's final weights")
    p.add_argument("run_dir")
    p.add_argument("images", nargs="+", help="image files (resized to the run's image size)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true")
    _add_data(sub)
    _add_analysis(sub)
    _add_robustness(sub)
    _add_sweep(sub)
    p = sub.add_parser("demo", help="the paper's four models side by side (Fashion-MNIST: the full set if here, "
                       "else the embedded subset)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data", default="auto", help="auto (the full Fashion-MNIST when found, else the embedded "
                   "fashion-mnist-mini; never downloads), fashion-mnist (downloads if missing), fashion-mnist-mini "
                   "or digits")
    p.add_argument("--data-dir", help="where to look for (or download) Fashion-MNIST")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--overwrite", action="store_true")
    return parser


COMMANDS = {"train": _train, "score": _score, "export": _export, "predict": _predict, "demo": _demo, "data": _data,
            "analyze": _analyze, "compare": _compare, "robustness": _robustness, "corrupt": _corrupt, "sweep": _sweep,
            "report": _report}


# A package a command may need that the core install leaves out -> the extra that brings it (pyproject.toml).
EXTRA_OF = {"scipy": "analysis", "sklearn": "analysis", "matplotlib": "analysis", "timm": "timm",
            "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "onnx": "export",
            "onnxscript": "export", "safetensors": "export", "ray": "ray", "submitit": "slurm",
            "lightning": "lightning"}


def _tolerant_output() -> None:
    """Paths come from the user as bytes: a name that is not valid in the locale's encoding reaches Python as
    lone surrogates, which a strict stdout (a UTF-8 locale) refuses to print, after the work is done. Print
    such bytes back as they came, and anything else unprintable as a backslash escape."""
    def handler(error):
        try:
            return codecs.lookup_error("surrogateescape")(error)
        except UnicodeError:
            return codecs.lookup_error("backslashreplace")(error)

    codecs.register_error("fixedhead", handler)
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="fixedhead")


def main(argv=None) -> int:
    _tolerant_output()
    try:
        argv = sys.argv[1:] if argv is None else argv
        args = build_parser(argv).parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as error:
        print(f"fixedhead: error: {one_line(str(error))}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        extra = EXTRA_OF.get((error.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"fixedhead: error: this needs {(error.name or '').split('.')[0]}, which is not installed: "
              f"pip install 'fixedhead[{extra}]'", file=sys.stderr)
        return 2
    except OSError as error:  # the machine's fault, not ours: a full disk, a read-only or missing place
        where = f": {shown(error.filename, 200)}" if error.filename else ""
        print(f"fixedhead: error: {error.strerror or type(error).__name__}{where}", file=sys.stderr)
        return 2
    except Exception as error:
        from .training.epoch import Interrupted

        if not isinstance(error, Interrupted):
            raise
        if os.environ.get("RANK", "0") == "0":  # under torchrun, say it once
            print(f"fixedhead: {error}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("fixedhead: interrupted; a run can be continued with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
