"""Prepare time of the fMRI pipeline against the I/O floor, measured side by side.

The I/O floor is the time to just load every bold run of the dataset with nibabel (all voxels,
float32). The prepare time is `prepare bids-fmri` on the same files: masking, GLM betas,
z-scoring and writing the store (feature extraction is timed separately: it depends on the
number of stimuli, not of bold runs). Target: prepare / I/O floor <= 3.

The same files as a local DataLad dataset (NIfTI annexed, sidecars and events in git, as on
OpenNeuro) prepared through the DataLad source: clone into the store's cache, fetch every run
(git-annex hard-links the content from the local dataset, or copies it across file systems),
then the same pipeline. Its floor adds the copy of the bold bytes to the I/O floor; a second
prepare is a cache hit without fetching.

    python bench/prepare_fmri.py [--out bench/results/prepare_fmri.json] [--set simulator.KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from mindzoo.datasets import datalad_source
from mindzoo.datasets.catalog import get_dataset
from mindzoo.datasets.synthetic.fmri import simulate_bids
from mindzoo.datasets.synthetic.fmri_config import SyntheticFMRIConfig
from mindzoo.pipelines.prepare import prepare_dataset, resolve_settings


def load_all_bold(root: Path) -> tuple[float, int]:
    """Seconds to load every bold run with nibabel, and the number of runs."""
    runs = sorted(root.rglob("*_bold.nii*"))
    start = time.perf_counter()
    for path in runs:
        np.asarray(nib.load(path).dataobj, dtype=np.float32)
    return time.perf_counter() - start, len(runs)


def copy_all_bold(root: Path, target: Path) -> float:
    """Seconds to copy every bold run's bytes (what fetching from a local remote must do)."""
    start = time.perf_counter()
    for path in sorted(root.rglob("*_bold.nii*")):
        destination = target / path.relative_to(root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)
    seconds = time.perf_counter() - start
    shutil.rmtree(target)
    return seconds


def make_datalad_dataset(root: Path, target: Path) -> float:
    """Copy ``root`` to ``target`` as a DataLad dataset laid out as OpenNeuro's; seconds taken."""
    import datalad.api as dl

    shutil.copytree(root, target)
    start = time.perf_counter()
    with datalad_source.git_environment():
        dataset = dl.create(path=str(target), force=True, result_renderer="disabled")
        (target / ".gitattributes").write_text(
            "* annex.backend=MD5E\n* annex.largefiles=anything\n**/.git* annex.largefiles=nothing\n"
            "*.tsv annex.largefiles=nothing\n*.json annex.largefiles=nothing\n"
        )
        dataset.save(message="simulated BIDS", result_renderer="disabled")
    return time.perf_counter() - start


def bench_datalad(root: Path, work: Path, repeats: int, floor: float) -> dict:
    """DataLad-source prepare (fresh clone and fetch each time) against the I/O floor."""
    dataset = work / "datalad"
    make_seconds = make_datalad_dataset(root, dataset)
    copy_floor = min(copy_all_bold(root, work / f"copy-{i}") for i in range(repeats))
    prepares, fetches = [], []
    for i in range(repeats):
        store = work / f"datalad-store-{i}"
        start = time.perf_counter()
        prepare_dataset(
            "bids-fmri", store, source=dataset, overrides=["features=[]"], progress=False
        )
        prepares.append(time.perf_counter() - start)
        fetches.append(prepare_manifest(store)["n_files_fetched"])
    start = time.perf_counter()
    prepare_dataset(
        "bids-fmri",
        work / "datalad-store-0",
        source=dataset,
        overrides=["features=[]"],
        progress=False,
    )
    cache_hit = time.perf_counter() - start
    return {
        "make_dataset_seconds": round(make_seconds, 2),
        "copy_floor_seconds": round(copy_floor, 3),
        "io_plus_copy_floor_seconds": round(floor + copy_floor, 3),
        "prepare_seconds": round(min(prepares), 3),
        "ratio_prepare_over_io_floor": round(min(prepares) / floor, 2),
        "ratio_prepare_over_io_plus_copy_floor": round(min(prepares) / (floor + copy_floor), 2),
        "files_fetched": fetches[0],
        "cache_hit_seconds": round(cache_hit, 3),
        "all_prepare_seconds": [round(x, 3) for x in prepares],
    }


def prepare_manifest(store: Path) -> dict:
    """The DataLad provenance recorded in the store's current version."""
    from mindzoo.datasets.store import TensorStore

    return TensorStore.open(store).manifest["source"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/prepare_fmri.json"))
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    simulator = resolve_settings(get_dataset("synthetic-fmri"), args.sets)["simulator"]
    work = Path(tempfile.mkdtemp(prefix="mindzoo-bench-"))
    try:
        root = work / "bids"
        start = time.perf_counter()
        simulate_bids(root, SyntheticFMRIConfig(**simulator), progress=False)
        simulate_seconds = time.perf_counter() - start
        load_all_bold(root)  # warm the page cache so both timings read from memory alike
        floors, prepares = [], []
        for i in range(args.repeats):
            floors.append(load_all_bold(root)[0])
            start = time.perf_counter()
            prepare_dataset(
                "bids-fmri",
                work / f"store-{i}",
                source=root,
                overrides=["features=[]"],
                progress=False,
            )
            prepares.append(time.perf_counter() - start)
        start = time.perf_counter()
        prepare_dataset(
            "bids-fmri", work / "store-0", source=root, overrides=["features=[]"], progress=False
        )
        cache_hit_seconds = time.perf_counter() - start
        n_runs = load_all_bold(root)[1]
        bold_bytes = sum(p.stat().st_size for p in root.rglob("*_bold.nii*"))
        datalad = bench_datalad(root, work, args.repeats, min(floors))
        result = {
            "benchmark": "prepare_fmri",
            "machine": {"cpu_count": torch.get_num_threads(), "platform": platform.platform()},
            "dataset": {"n_runs": n_runs, "bold_megabytes_on_disk": round(bold_bytes / 1e6, 1)},
            "simulate_seconds": round(simulate_seconds, 2),
            "io_floor_seconds": round(min(floors), 3),
            "prepare_seconds": round(min(prepares), 3),
            "ratio_prepare_over_io_floor": round(min(prepares) / min(floors), 2),
            "target_ratio": 3.0,
            "cache_hit_seconds": round(cache_hit_seconds, 3),
            "all_io_floor_seconds": [round(x, 3) for x in floors],
            "all_prepare_seconds": [round(x, 3) for x in prepares],
            "datalad_source": datalad,
        }
    finally:
        datalad_source.remove_tree(work)
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
