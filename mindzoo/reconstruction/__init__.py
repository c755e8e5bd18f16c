"""mindzoo.reconstruction."""
