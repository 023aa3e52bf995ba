"""Datasets, training loops, checkpoints and cross-validation for the 2D and 3D classifiers."""
