"""What every command shares: its parser's options, loading the model they name, and turning
bad input into one line.

``--workdir W`` or ``--checkpoint DIR`` name the model (``inference.loaded_model`` loads it);
``--image-size`` and ``--labels`` describe a model directory converted without them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Callable, Iterator, Sequence

from medmamba_jax.analysis.errors import ToolError
from medmamba_jax.evaluation.predict import TTA_MODES
from medmamba_jax.inference.loaded_model import Loaded, from_checkpoint, from_workdir
from medmamba_jax.training.errors import expected_errors
from medmamba_jax.training.lifecycle import report_stop


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Runs ``main(argv)``; an expected error prints ``error: ...`` and gives exit status 1,
    a Ctrl-C one line and status 130."""
    try:
        return main(argv)
    except (ToolError, *expected_errors()) as err:
        # Whole: a CheckpointError lists every bad key on the lines after its first.
        print(f"error: {str(err).strip() or type(err).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stopped:
        return report_stop(stopped)


def parser_for(module: str, doc: str) -> argparse.ArgumentParser:
    """The parser of ``python -m MODULE`` (named ``medmamba TOOL`` when that command runs it): the
    docstring's first paragraph as its description, the rest (usage examples) as its epilog."""
    first, _, rest = doc.partition("\n\n")
    program = sys.argv[0] if sys.argv else ""
    via_medmamba = (os.path.basename(program) == "medmamba"
                    or program.endswith(os.path.join("medmamba_jax", "__main__.py")))
    prog = f"medmamba {module.rsplit('.', 1)[-1]}" if via_medmamba else f"python -m {module}"
    return argparse.ArgumentParser(prog=prog, description=first, epilog=rest,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def int_at_least(lowest: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``lowest``, or a usage error naming the bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest}, got {value}")
        return value

    parse.__name__ = f"integer >= {lowest}"
    return parse


def float_above(lowest: float) -> Callable[[str], float]:
    """An argparse ``type``: a number > ``lowest``, or a usage error naming the bound."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > lowest:
            raise argparse.ArgumentTypeError(f"must be above {lowest:g}, got {text}")
        return value

    parse.__name__ = f"number > {lowest:g}"
    return parse


def add_batch_size(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument("--batch-size", type=int_at_least(1), default=default,
                        help=f"images per forward pass (default: {default})")


def add_model_args(parser: argparse.ArgumentParser, checkpoint_ok: bool) -> None:
    """``--workdir`` (and, where a dataset is not needed, ``--checkpoint``) options."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="training workdir written by train.py")
    parser.add_argument("--which", choices=("best", "latest"), default="best",
                        help="which checkpoint of the workdir (default: best)")
    if checkpoint_ok:
        source.add_argument("--checkpoint", help="model directory written by medmamba convert; it records "
                            "its input size and class names, unless converted without them")
        add_card_args(parser, "for --checkpoint (default: the checkpoint's; else 224)",
                      "for --checkpoint (default: the checkpoint's; else class_0, class_1, ...)")
    add_allow_nonfinite(parser)


def add_tta(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation: flip averages the probabilities "
                        "of each image and its left-right mirror (default: none)")


def add_allow_nonfinite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="load weights that hold NaN or inf (refused by default: they give NaN scores)")


@contextlib.contextmanager
def nonfinite_hint() -> Iterator[None]:
    """A NonFiniteWeightsError inside becomes a ToolError that names --allow-nonfinite."""
    from medmamba_jax.model_files import NonFiniteWeightsError

    try:
        yield
    except NonFiniteWeightsError as err:
        raise ToolError(f"{err}; --allow-nonfinite loads it anyway") from None


def add_card_args(parser: argparse.ArgumentParser, size_default: str, labels_default: str) -> None:
    """``--image-size`` and ``--labels``: what a model directory records (model_files.ModelCard)."""
    parser.add_argument("--image-size", type=int_at_least(8), help=f"model input side {size_default}")
    parser.add_argument("--labels", help="class names, comma-separated or a text file with one name per line, "
                        + labels_default)


def add_split_args(parser: argparse.ArgumentParser, limit_default: int = 0, split_default: str | None = "test") -> None:
    """``--split``, ``--limit`` and ``--data-dir``: which images of a workdir's dataset to use.
    ``split_default`` None leaves ``args.split`` None when not given, for a command that has
    another source of images and applies "test" itself."""
    parser.add_argument("--split", default=split_default, help="train, val or test (default: test)")
    shown = f"{limit_default}" if limit_default else "all"
    parser.add_argument("--limit", type=int_at_least(0), default=limit_default,
                        help=f"use at most the first N images (default: {shown})")
    parser.add_argument("--data-dir", help="where the dataset is now, if it moved since training "
                        "(default: the workdir's config.data_dir)")


def load(args: argparse.Namespace) -> Loaded:
    """The model and its data description named by ``add_model_args`` options (and
    ``add_split_args``' --data-dir, where the command has it)."""
    with nonfinite_hint():
        if getattr(args, "checkpoint", None):
            return from_checkpoint(args.checkpoint, args.image_size, args.labels, args.allow_nonfinite)
        return from_workdir(args.workdir, args.which, getattr(args, "data_dir", None), args.allow_nonfinite)



def writable_dir(path: str, what: str = "output") -> str:
    """``path`` with ~ expanded, if it is a directory this user can write in or can create;
    ToolError otherwise, naming ``what`` the directory is for."""
    path = os.path.expanduser(path)
    existing = os.path.abspath(path)
    while not os.path.exists(existing):  # the nearest part of the path that exists
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "" if existing == os.path.abspath(path) else f" ({existing} is)"
        raise ToolError(f"{what} {path} is a file, not a directory{where}")
    # effective_ids: the user a setuid or seteuid process writes as; a read-only mount fails for root too.
    if not os.access(existing, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        where = "" if existing == os.path.abspath(path) else f" ({existing} is)"
        raise ToolError(f"{what} {path} cannot be written: it is read-only to this user{where}")
    return path


def output_dir(path: str) -> str:
    """Creates (if needed) and returns the output directory ``path``."""
    path = writable_dir(path)
    os.makedirs(path, exist_ok=True)
    return path
