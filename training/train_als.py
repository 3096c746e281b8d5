"""Train implicit ALS on a prepared dataset: `python -m recsys_training.train_als`.

The same job as `recsys train als`; arguments are passed through, for
example `--dataset /work/prepared/diginetica --out runs/als --factors 64`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from recsys.cli import main as recsys_main


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    return recsys_main(["train", "als", *args])


if __name__ == "__main__":
    sys.exit(main())
