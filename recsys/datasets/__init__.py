"""Public datasets and the synthetic shop, converted to one Parquet layout.

`recsys.datasets.schema` defines the layout, `recsys.datasets.registry` lists
the adapters behind `recsys data prepare`, and `load_prepared` reads a
prepared folder back.
"""

from recsys.datasets.io import PreparedDataset, load_prepared

__all__ = ["PreparedDataset", "load_prepared"]
