"""Brain-MRI metastases classification: DICOM ingest, datasets, models, training and evaluation."""

__version__ = "0.1.0"
