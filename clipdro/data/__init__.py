"""Data: WebDataset training pipeline, sample-id rules, manifests and evaluation sets."""
