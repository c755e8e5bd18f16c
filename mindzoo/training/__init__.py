"""mindzoo.training."""
