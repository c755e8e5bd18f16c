"""mindzoo.models."""
