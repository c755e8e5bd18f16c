"""mindzoo: a brain-decoding data pipeline and model zoo (console script `braindecode-cli`)."""

__version__ = "0.1.0"
