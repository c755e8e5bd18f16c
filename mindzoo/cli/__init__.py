"""mindzoo.cli."""
