"""Optional dependencies: import one on use, or say in one line which extra installs it.

The core install holds what the quickstart needs; DataLad, braindecode, pynwb and the CLIP /
pretrained-diffusion stack come with extras (``pip install 'mindzoo[datalad]'`` and so on, or
``mindzoo[all]``). Code that needs one calls :func:`require` where it uses it, never at import
time, so ``braindecode-cli --help`` and every other command work without the extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from mindzoo.errors import UserInputError

EXTRAS = {
    "datalad": "DataLad sources (datalad, git-annex)",
    "eeg": "the braindecode EEG baselines (braindecode)",
    "nwb": "NWB recordings (pynwb)",
    "clip": "CLIP features and the pretrained diffusion backends (transformers)",
    "s3": "stores and runs on S3 (s3fs)",
}


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` (e.g. ``"braindecode.models"``); if it is missing, raise a
    :class:`UserInputError` naming the extra that installs it."""
    if extra not in EXTRAS:
        raise ValueError(f"Unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ImportError as err:
        missing = getattr(err, "name", None) or module
        raise UserInputError(
            f"{missing} is not installed; it is needed for {EXTRAS[extra]}: "
            f"pip install 'mindzoo[{extra}]'"
        ) from None
