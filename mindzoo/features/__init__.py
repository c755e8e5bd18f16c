"""mindzoo.features."""
