"""Train the two-tower model: `python -m recsys_training.train_two_tower`.

The same job as `recsys train two-tower`; arguments are passed through, for
example `--dataset /work/prepared/diginetica --out runs/two_tower --epochs 8`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from recsys.cli import main as recsys_main


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    return recsys_main(["train", "two-tower", *args])


if __name__ == "__main__":
    sys.exit(main())
