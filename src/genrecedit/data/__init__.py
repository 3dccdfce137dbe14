"""Data stage: readers into one typed dataset, and the evaluation protocols over it."""
from genrecedit.data.dataset import PAD_ITEM, CaseSet, RecDataset, Split
from genrecedit.data.protocols import SplitConfig, format_split_summary, make_split, save_split_summary, split_summary
from genrecedit.data.readers import (
    DatasetNotFoundError,
    default_cache_dir,
    default_data_root,
    load_dataset,
    load_ml100k,
    read_amazon2023,
    read_atomic,
)

__all__ = [
    "PAD_ITEM",
    "CaseSet",
    "DatasetNotFoundError",
    "RecDataset",
    "Split",
    "SplitConfig",
    "default_cache_dir",
    "default_data_root",
    "format_split_summary",
    "load_dataset",
    "load_ml100k",
    "make_split",
    "read_amazon2023",
    "read_atomic",
    "save_split_summary",
    "split_summary",
]
