"""Command line: ``python -m fastnn train``, ``inspect``, ``experiment``, ``bench``, ``warmup``
and ``clear-cache``.

The ``fastnn`` console script is the same command.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

_T0 = time.perf_counter()


def _sizes(text):
    """``784,16,16,10`` or ``784-16-16-10``: positive whole numbers, at least two."""
    parts = text.split(",") if "," in text else text.split("-")
    try:
        sizes = [int(s) for s in parts]
    except ValueError:
        sizes = None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"sizes must be positive whole numbers like 784,16,16,10, got {text!r}"
        )
    if len(sizes) < 2:
        raise argparse.ArgumentTypeError("sizes needs at least an input and an output layer")
    return sizes


def _check_save_path(path):
    """An error message if a model cannot be written at ``path``, else None (before training)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return f"--save {path} is a directory; give the model file's path"
    if not os.path.isdir(folder):
        return f"--save {path}: the folder {folder} does not exist"
    if not os.access(folder, os.W_OK):
        return f"--save {path}: the folder {folder} is not writable"
    return None


def _add_train(sub):
    p = sub.add_parser(
        "train",
        help="train a network on MNIST and report its test accuracy",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--sizes",
        type=_sizes,
        default=[784, 16, 16, 10],
        help="layer sizes, input first (784 and 10 for MNIST)",
    )
    p.add_argument(
        "--activation",
        default="sigmoid",
        choices=["sigmoid", "relu", "tanh"],
        help="hidden-layer activation",
    )
    p.add_argument(
        "--output",
        default=None,
        choices=["sigmoid", "softmax"],
        help="output activation (default: softmax for log_loss, else sigmoid)",
    )
    p.add_argument(
        "--cost", default="quadratic", choices=["quadratic", "cross_entropy", "log_loss"]
    )
    p.add_argument(
        "--init",
        default="scaled",
        choices=["scaled", "standard"],
        help="weights N(0, 1/n_in) or N(0, 1)",
    )
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 penalty on weights")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=10, help="mini-batch size")
    p.add_argument("--eta", type=float, default=3.0, help="learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="Numba threads (default: all cores); results do not depend on it",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    _add_data_args(p)
    p.add_argument("--save", metavar="PATH", default=None, help="write the trained model (.npz)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.set_defaults(func=_train)


def _train(args):
    import numpy as np

    from .network import Network

    problem = _check_save_path(args.save) if args.save else None
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    data = _load_data(args)
    if data is None:
        return 2
    (X, y), (Xt, yt) = data
    try:
        net = Network(
            args.sizes,
            activation=args.activation,
            output=args.output,
            cost=args.cost,
            weight_decay=args.weight_decay,
            init=args.init,
            dtype=args.dtype,
            seed=args.seed,
        )
    except (TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sizes = "-".join(map(str, net.sizes))
    print(
        f"training {sizes} ({net.activation}/{net.output}, {net.cost_name} cost, "
        f"{net.n_params} parameters, {net.dtype.name}) on {len(X)} MNIST images: "
        f"{args.epochs} epochs, batch {args.batch_size}, eta {args.eta} "
        f"[{time.perf_counter() - _T0:.2f} s after start]",
        flush=True,
    )
    try:
        h = net.SGD(
            (X, y),
            args.epochs,
            args.batch_size,
            args.eta,
            test_data=(Xt, yt),
            quiet=args.quiet,
            threads=args.threads,
        )
    except (TypeError, ValueError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    best = int(np.argmax(h["test_accuracy"]))
    print(
        f"test accuracy {100 * h['test_accuracy'][-1]:.2f}% after {args.epochs} epochs "
        f"(best {100 * h['test_accuracy'][best]:.2f}% at epoch {best}); "
        f"{statistics.median(h['seconds']):.3f} s per epoch (median)"
    )
    if args.save:
        try:
            path = net.save(args.save)
        except OSError as e:
            print(f"error: could not save the model: {e}", file=sys.stderr)
            return 2
        print(f"model saved to {path}")
    return 0


def _load_data(args):
    """MNIST as uint8 arrays, or None after printing the error."""
    import numpy as np

    from .datasets import MNISTNotFoundError, load_mnist

    try:
        return load_mnist(args.data_dir, dtype=np.uint8, download=args.download)
    except (MNISTNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def _add_data_args(p):
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with the MNIST files (else $FASTNN_DATA/mnist, then the cache)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="download MNIST into the user cache if it is not found",
    )


def _out_dir(path):
    """An error message if ``path`` cannot be made a writable folder, else None."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        return f"--out {path}: {e.strerror or e}"
    if not os.access(path, os.W_OK):
        return f"--out {path} is not writable"
    return None


def _have_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


_NO_FIGURES = "matplotlib is not installed: for the figures, pip install 'fastnn[plot]'"


def _inspect(args):
    import numpy as np

    from . import inspect
    from .network import Network

    problem = _out_dir(args.out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        net = Network.load(args.model)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if net.sizes[0] != 784:
        print(f"error: {args.model} takes {net.sizes[0]} inputs, not MNIST's 784", file=sys.stderr)
        return 2
    data = _load_data(args)
    if data is None:
        return 2
    train, test = data
    if not 0 <= args.image < len(test[0]):
        print(f"error: --image must be in [0, {len(test[0]) - 1}]", file=sys.stderr)
        return 2
    figures = _have_matplotlib()
    numbers, written = inspect.report(
        net, args.out, train, test, image=args.image, seed=args.seed, figures=figures
    )
    g = ", ".join(f"{v:.3g}" for v in numbers["gradient_norms"])
    g0 = ", ".join(f"{v:.3g}" for v in numbers["gradient_norms_at_init"])
    print(
        f"{args.model}: test accuracy {100 * numbers['test_accuracy']:.2f}%; gradient norms "
        f"per layer {g} (at initialisation {g0}); uniform noise answered as "
        f"{int(np.argmax(numbers['noise_class_fractions']))} in "
        f"{100 * max(numbers['noise_class_fractions']):.0f}% of cases"
    )
    print(f"wrote {len(written)} files to {args.out}: " + ", ".join(map(os.path.basename, written)))
    if not figures:
        print(_NO_FIGURES)
    return 0


def _add_inspect(sub):
    p = sub.add_parser(
        "inspect",
        help="figures and numbers of what a trained MNIST network does inside",
        description="Write PNG figures (weights, preferred inputs, activations, gradient "
        "norms, lousiest examples, confusion matrix, answers to noise), inspect.json with "
        "the numbers behind them and report.md showing them, for a model saved by "
        "'fastnn train --save'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", help="a model file (.npz) written by Network.save")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the files")
    p.add_argument("--image", type=int, default=0, help="test image shown layer by layer")
    p.add_argument("--seed", type=int, default=0, help="seeds the noise and the fresh network")
    _add_data_args(p)
    p.set_defaults(func=_inspect)


def _experiment(args):
    from .experiments import memorization
    from .persistence import write_json

    problem = _out_dir(args.out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    for name in ("n", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    if args.sizes[0] != 784 or args.sizes[-1] != 10:
        print("error: --sizes must start with 784 and end with 10 for MNIST", file=sys.stderr)
        return 2
    data = _load_data(args)
    if data is None:
        return 2
    train, test = data
    if args.n > len(train[0]):
        print(f"error: --n must be at most {len(train[0])}", file=sys.stderr)
        return 2
    print(
        f"memorization: {'-'.join(map(str, args.sizes))} ({args.activation}, {args.cost}) on "
        f"{args.n} training images, {args.epochs} epochs, batch {args.batch_size}, eta "
        f"{args.eta}: true labels, shuffled labels, random pixels",
        flush=True,
    )
    try:
        res = memorization(
            train,
            test,
            progress=lambda line: print("  " + line, flush=True),
            n=args.n,
            epochs=args.epochs,
            sizes=tuple(args.sizes),
            activation=args.activation,
            cost=args.cost,
            eta=args.eta,
            batch_size=args.batch_size,
            seed=args.seed,
        )
    except (TypeError, ValueError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    written = [write_json(os.path.join(args.out, "memorization.json"), res)]
    if _have_matplotlib():
        from .figures import memorization_figure, save

        written.append(save(memorization_figure(res), os.path.join(args.out, "memorization.png")))
    print("wrote " + ", ".join(written))
    if len(written) == 1:
        print(_NO_FIGURES)
    return 0


def _add_experiment(sub):
    from .experiments import DEFAULTS

    p = sub.add_parser(
        "experiment",
        help="experiments: memorization (true labels, shuffled labels, random pixels)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("name", choices=["memorization"], help="the experiment")
    p.add_argument("--n", type=int, default=DEFAULTS["n"], help="training images")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the files")
    p.add_argument(
        "--sizes", type=_sizes, default=list(DEFAULTS["sizes"]), help="layer sizes, input first"
    )
    p.add_argument(
        "--activation", default=DEFAULTS["activation"], choices=["sigmoid", "relu", "tanh"]
    )
    p.add_argument(
        "--cost", default=DEFAULTS["cost"], choices=["quadratic", "cross_entropy", "log_loss"]
    )
    p.add_argument("--eta", type=float, default=DEFAULTS["eta"], help="learning rate")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    _add_data_args(p)
    p.set_defaults(func=_experiment)


def _clear_cache(args):
    from .kernels import cache

    n = cache.clear()
    print(
        f"removed {n} cached kernel file{'s' * (n != 1)} from: " + ", ".join(cache.candidate_dirs())
    )
    return 0


def _add_clear_cache(sub):
    p = sub.add_parser("clear-cache", help="delete fastnn's compiled kernels from Numba's cache")
    p.set_defaults(func=_clear_cache)


def _warmup(args):
    from .kernels import cache
    from .warmup import warmup

    print(f"compiling fastnn's kernels into {cache.cache_dir()}", flush=True)
    t = time.perf_counter()
    warmup(args.dtype, args.groups, progress=lambda line: print(line, flush=True))
    print(f"done in {time.perf_counter() - t:.1f} s")
    return 0


def _add_warmup(sub):
    from .warmup import DEFAULT_GROUPS, GROUPS

    p = sub.add_parser(
        "warmup",
        help="compile the kernels ahead of time (a Docker build step, a cluster start-up)",
        description="Compile fastnn's kernels into the kernel cache, one line per group. "
        + "Groups: "
        + "; ".join(f"{g}: {GROUPS[g][0]}" for g in GROUPS),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float64"])
    p.add_argument(
        "--groups", nargs="+", default=list(DEFAULT_GROUPS), choices=list(GROUPS), metavar="GROUP"
    )
    p.set_defaults(func=_warmup)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_inspect(sub)
    _add_experiment(sub)
    _add_warmup(sub)
    _add_clear_cache(sub)
    from .bench import add_parser

    add_parser(sub)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (python -m fastnn ... | head -1): stop quietly; point stdout at
        # devnull so that the interpreter's final flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
