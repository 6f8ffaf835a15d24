"""The AutoDL platform, locally: dataset reader and writer, ingestion program, local test runner.

`AutoDLDataset` and `AutoDLMetadata` follow the platform's class and method names. Importing
this package imports TensorFlow first, as the platform's ingestion program does.
"""
from ingestion_local.dataset import AutoDLDataset, AutoDLMetadata, DatasetFormatError

__all__ = ["AutoDLDataset", "AutoDLMetadata", "DatasetFormatError"]
