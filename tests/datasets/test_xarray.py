"""A store group opens with `xarray.open_zarr`: the arrays name their dimensions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from mindzoo.datasets.store import TensorStore


def test_xarray_opens_signals_and_features(shared_tiny_store: Path) -> None:
    store = TensorStore.open(shared_tiny_store)
    subject = xr.open_zarr(
        str(store.path), group="subjects/sub-01", consolidated=False, zarr_format=3
    )
    assert subject["signals"].dims == ("trial", "voxel")
    np.testing.assert_array_equal(subject["signals"].values, store.signals("sub-01")[...])
    trials = xr.open_zarr(
        str(store.path), group="subjects/sub-01/trials", consolidated=False, zarr_format=3
    )
    assert trials["stimulus_index"].dims == ("trial",)
    features = xr.open_zarr(
        str(store.path), group="features/efficientnet-lite0", consolidated=False, zarr_format=3
    )
    assert features["global"].dims[0] == "stimulus"
    assert features["global"].shape == (len(store.stimulus_ids), 1280)
