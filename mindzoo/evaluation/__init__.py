"""mindzoo.evaluation."""
