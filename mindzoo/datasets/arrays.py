"""How the store writes one array or one table into a Zarr group (shared by every layout).

Arrays name their dimensions (Zarr v3 ``dimension_names``) so xarray can open a group; tables
(trials, units) are one 1-D array per column, strings stored as int32 codes with their
categories in the table group's ``categories`` attribute.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import zarr

SPLITS = ("train", "val", "test")
_TRIAL_CHUNK = 256


def _dimension_names(data: np.ndarray, leading: tuple[str, ...], name: str) -> tuple[str, ...]:
    """``leading`` names for the first axes, ``<name>_<i>`` for the rest (xarray's dims)."""
    named = leading[: data.ndim]
    return (*named, *(f"{name}_{i}" for i in range(len(named), data.ndim)))


def _write_array(
    group: zarr.Group,
    name: str,
    data: np.ndarray,
    chunk_rows: int | None = None,
    dims: tuple[str, ...] = (),
) -> None:
    data = np.ascontiguousarray(data)
    chunks = None
    if chunk_rows is not None and data.ndim >= 1:
        chunks = (max(1, min(chunk_rows, data.shape[0])), *data.shape[1:])
    array = group.create_array(
        name,
        shape=data.shape,
        dtype=data.dtype,
        chunks=chunks or "auto",
        dimension_names=_dimension_names(data, dims, name),
    )
    if data.size:
        array[...] = data


def write_table(group: zarr.Group, table: pd.DataFrame, dim: str) -> None:
    """One 1-D array per column of ``table`` along dimension ``dim``; string columns as int32
    codes (``split`` in :data:`SPLITS` order, others sorted) with their categories in attrs."""
    categories: dict[str, list[str]] = {}
    for column in table.columns:
        values = table[column]
        if values.dtype == object or isinstance(values.dtype, pd.StringDtype):
            cats = SPLITS if column == "split" else tuple(sorted(set(values.astype(str))))
            lookup = {c: i for i, c in enumerate(cats)}
            codes = np.array([lookup[str(v)] for v in values], dtype=np.int32)
            categories[column] = list(cats)
            _write_array(group, column, codes, dims=(dim,))
        else:
            _write_array(group, column, values.to_numpy(), dims=(dim,))
    group.attrs["categories"] = categories


def read_table(group: zarr.Group) -> pd.DataFrame:
    """The table :func:`write_table` wrote, string columns decoded, columns sorted by name."""
    categories = group.attrs.get("categories", {})
    columns = {}
    for name in sorted(group.array_keys()):
        values = group[name][...]
        if name in categories:
            values = np.asarray(categories[name], dtype=object)[values]
        columns[name] = values
    return pd.DataFrame(columns)
