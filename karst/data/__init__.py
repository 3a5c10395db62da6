"""Datasets: embedded procedural tasks and real sources (folders, zips, VTAB-1K, torchvision).

``load_dataset(spec, transform=...)`` returns a :class:`DatasetBundle`; ``list_datasets()`` lists
the named ones, embedded first.
"""

from karst.data.sources import DatasetBundle, list_datasets, load_dataset
from karst.data.synthetic import TASKS, make_task

__all__ = ["TASKS", "DatasetBundle", "list_datasets", "load_dataset", "make_task"]
