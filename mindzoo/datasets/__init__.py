"""mindzoo.datasets."""
