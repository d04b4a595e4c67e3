"""Entry point ``generate``: synthetic fundus photos in a public DR set's own layout (for demos and tests)."""

from __future__ import annotations

import logging
import os
import sys

from pipeline.cli import exit_with, imports_done
from pipeline.cli._runner import EntryPointParser, setup_logging
from pipeline.catalog import LAYOUTS
from pipeline.config import coerce_int, coerce_value
from pipeline.data.synthetic import (EYEPACS_GRADE_SHARES, UNIFORM_GRADE_SHARES, generate_eyepacs_layout,
                                     shares_in_percent)
from pipeline.errors import ConfigError

NAMED_SHARES = {"eyepacs": EYEPACS_GRADE_SHARES, "uniform": UNIFORM_GRADE_SHARES}
log = logging.getLogger("pipeline")


def parse_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep:
        raise ConfigError(f"size={text!r} must look like WIDTHxHEIGHT, e.g. 3888x2592")
    return coerce_int(width, "size width", 1), coerce_int(height, "size height", 1)


def parse_shares(text: str) -> tuple[float, ...]:
    if text in NAMED_SHARES:
        return NAMED_SHARES[text]
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"shares={text!r}: use {' or '.join(NAMED_SHARES)} or five comma-separated numbers") from None


def main(argv: list[str] | None = None) -> int:
    parser = EntryPointParser(prog="generate", description=__doc__)
    parser.add_argument("--out", default="data/raw", help="folder for the set: its label files and photos "
                        "(default %(default)s)")
    parser.add_argument("--layout", default="labs", choices=LAYOUTS,
                        help="the set whose layout to write (default %(default)s: the course labs' CSVs)")
    parser.add_argument("--train_patients", default="150")
    parser.add_argument("--test_patients", default="50")
    parser.add_argument("--size", default="512x384", help="photo WIDTHxHEIGHT; real EyePACS photos are up to 4752x3168")
    parser.add_argument("--shares", default="eyepacs", help=f"grade shares: eyepacs ({shares_in_percent(EYEPACS_GRADE_SHARES)}%), uniform, "
                        "or 5 numbers")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--defects", default="0", help="share of photos given one of clinics' defects (frames, "
                        "text, bars, markers, clipping, dark photos, a small fundus); 0-1 (default %(default)s)")
    parser.add_argument("--workers", default="0", help="processes; 0 = one per core")
    args = parser.parse_args(argv)
    imports_done()
    setup_logging()
    try:
        counts = generate_eyepacs_layout(
            args.out,
            train_patients=coerce_int(args.train_patients, "train_patients", 1),
            test_patients=coerce_int(args.test_patients, "test_patients", 1),
            size=parse_size(args.size),
            grade_shares=parse_shares(args.shares),
            seed=coerce_int(args.seed, "seed"),
            workers=coerce_int(args.workers, "workers", 0) or os.cpu_count() or 1,
            defects=coerce_value(args.defects, float, "defects"),
            layout=args.layout,
        )
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"synthetic {args.layout} layout in {args.out}: " + ", ".join(f"{k} {v} images" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    exit_with(main())
