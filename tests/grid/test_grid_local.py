"""`evaluate --grid` with the local executor: cells scored in a process pool equal a direct
`evaluate`, finished cells are skipped, a lost cell is recomputed, and --dry-run estimates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from factories.cli import cli, error_lines

GRID = {
    "name": "tiny",
    "runs": {
        "ridge-a": {"train": {"model": "ridge", "sets": ["model.alphas=[1.0]"]}},
        "ridge-b": {"train": {"model": "ridge", "sets": ["model.alphas=[1000.0]"]}},
    },
    "subjects": "all",
    "backends": ["none"],
    "metrics": ["features"],
}


def write_grid(path: Path, store: Path, **changes: object) -> Path:
    """A grid file over ``store`` (named ``tiny``), with top-level ``changes``."""
    path.write_text(yaml.safe_dump({**GRID, "stores": {"tiny": str(store)}, **changes}))
    return path


@pytest.fixture(scope="module")
def grid_run(shared_tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grid")
    grid = write_grid(root / "grid.yaml", shared_tiny_store)
    assert cli("evaluate", "--grid", str(grid), "--out", str(root / "out"), "--jobs", "2") == 0
    return root


def test_grid_table_equals_direct_evaluation(
    grid_run: Path, shared_tiny_store: Path, tmp_path: Path
) -> None:
    table = pd.read_csv(grid_run / "out" / "results.csv")
    assert sorted(zip(table["run"], table["subject"], strict=True)) == [
        ("ridge-a", "sub-01"),
        ("ridge-a", "sub-02"),
        ("ridge-b", "sub-01"),
        ("ridge-b", "sub-02"),
    ]
    parquet = pd.read_parquet(grid_run / "out" / "results.parquet")
    pd.testing.assert_frame_equal(parquet, table, check_dtype=False)
    assert (table["wall_s"] > 0).all() and (table["peak_rss_mb"] > 50).all()
    run = tmp_path / "ridge"
    assert cli("train", "ridge", "--store", str(shared_tiny_store), "--out", str(run),
               "--set", "model.alphas=[1.0]") == 0  # fmt: skip
    assert cli("evaluate", str(run)) == 0
    direct = json.loads((run / "eval" / "metrics.json").read_text())["subjects"]
    mine = table[table["run"] == "ridge-a"].set_index("subject")
    space = "efficientnet-lite0"
    for subject, scores in direct.items():
        for metric in ("two_way_id", "retrieval_top1", "feature_corr"):
            key = f"{metric}.{space}"
            assert mine.loc[subject, key] == pytest.approx(scores[key], abs=1e-12)
    # the two ridge penalties give different numbers: the cells are not copies of each other
    other = table[table["run"] == "ridge-b"].set_index("subject")
    assert (other[f"feature_corr.{space}"] != mine[f"feature_corr.{space}"]).all()
    trains = json.loads((grid_run / "out" / "trains.json").read_text())
    assert sorted(t["name"] for t in trains.values()) == [
        "train-ridge-a-tiny",
        "train-ridge-b-tiny",
    ]
    assert all(t["ok"] and t["wall_s"] > 0 and t["peak_rss_mb"] > 50 for t in trains.values())
    md = (grid_run / "out" / "results.md").read_text()
    assert "4 of 4 cells finished; 0 failed." in md
    figures = sorted(p.name for p in (grid_run / "out" / "figures").iterdir())
    assert f"two_way_id.{space}.png" in figures


def test_rerun_skips_finished_cells_and_recomputes_a_lost_one(
    grid_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = grid_run / "out"
    grid = grid_run / "grid.yaml"
    before = {p.name: (p / "result.json").stat().st_mtime_ns for p in (out / "cells").iterdir()}
    assert cli("evaluate", "--grid", str(grid), "--out", str(out)) == 0
    assert "0 cells run, 4 already finished, 0 failed" in " ".join(capsys.readouterr().out.split())
    lost = sorted(before)[0]
    shutil.rmtree(out / "cells" / lost)
    assert cli("evaluate", "--grid", str(grid), "--out", str(out), "--dry-run") == 0
    listing = " ".join(capsys.readouterr().out.split())
    assert listing.count("finished") >= 5 and "1 of 4 cells to run" in listing
    assert "peak memory about" in listing
    assert cli("evaluate", "--grid", str(grid), "--out", str(out), "--jobs", "2") == 0
    assert "1 cells run, 3 already finished" in " ".join(capsys.readouterr().out.split())
    after = {p.name: (p / "result.json").stat().st_mtime_ns for p in (out / "cells").iterdir()}
    assert {k for k in before if before[k] == after[k]} == set(before) - {lost}


def test_failed_cell_is_reported_with_its_log(
    grid_run: Path, shared_tiny_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = grid_run / "out" / "runs"
    broken = grid_run / "broken-run"
    shutil.copytree(next(run.iterdir()), broken)
    (broken / "predictions.safetensors").write_bytes(b"not safetensors")
    grid = write_grid(
        grid_run / "broken.yaml",
        shared_tiny_store,
        runs={"broken": {"path": str(broken)}},
        subjects=["sub-01"],
    )
    assert cli("evaluate", "--grid", str(grid), "--out", str(grid_run / "b"), "--retries", "1") == 1
    out = capsys.readouterr().out
    assert "0 cells run, 0 already finished, 1 failed" in " ".join(out.split())
    log = Path(out.split("(log: ")[1].split(")")[0].replace("\n", ""))
    assert log.is_file() and "Traceback" in log.read_text()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"runs": {}}, "runs is empty"),
        ({"runs": {"x": {}}}, "give exactly one of path"),
        ({"backends": ["none"], "metrics": ["images"]}, "metrics lists images"),
        ({"subjects": ["sub-09"]}, "has no subject sub-09"),
        ({"runs": {"x": {"train": {"model": "ridge", "stores": ["nope"]}}}}, "store nope"),
        ({"runs": {"x": {"train": {"model": "ridge", "sets": ["alpha=1"]}}}}, "'alpha'"),
    ],
)
def test_bad_grid_is_one_line(
    changes: dict, message: str, shared_tiny_store: Path, tmp_path: Path, capsys
) -> None:
    grid = write_grid(tmp_path / "g.yaml", shared_tiny_store, **changes)
    assert cli("evaluate", "--grid", str(grid), "--out", str(tmp_path / "o")) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "o").exists()


def test_example_grid_plans_and_dry_runs(
    shared_tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = (
        Path(__file__).resolve().parents[2] / "configs/experiments/synthetic-fmri-baselines.yaml"
    )
    spec = yaml.safe_load(example.read_text())
    spec["stores"] = {"synth": str(shared_tiny_store)}
    grid = tmp_path / "example.yaml"
    grid.write_text(yaml.safe_dump(spec))
    assert cli("evaluate", "--grid", str(grid), "--out", str(tmp_path / "o"), "--dry-run") == 0
    listing = " ".join(capsys.readouterr().out.split())
    assert listing.count("todo") == 3 + 3 * 2  # 3 train tasks, 3 runs x 2 subjects
    assert "6 cells to run; no finished cell to estimate from yet" in listing
    assert not (tmp_path / "o").exists()  # a dry run writes nothing


def test_grid_scores_an_ephys_run_per_subject(tmp_path: Path) -> None:
    from factories.ephys import write_ephys_store

    store = write_ephys_store(tmp_path / "ephys", seed=5)
    sets_ = ["trainer.epochs=3", "trainer.batch_size=16"]
    grid = tmp_path / "ephys.yaml"
    grid.write_text(
        yaml.safe_dump(
            {
                "name": "ephys",
                "stores": {"ephys": str(store)},
                "runs": {"eegnet": {"train": {"model": "eegnet", "sets": sets_}}},
            }
        )
    )
    assert cli("evaluate", "--grid", str(grid), "--out", str(tmp_path / "out"), "--jobs", "2") == 0
    table = pd.read_csv(tmp_path / "out" / "results.csv").set_index("subject")
    run_dir = next((tmp_path / "out" / "runs").iterdir())
    direct = json.loads((run_dir / "metrics.json").read_text())
    assert cli("evaluate", str(run_dir)) == 0
    scores = json.loads((run_dir / "eval" / "metrics.json").read_text())["subjects"]
    assert sorted(table.index) == sorted(scores) and len(scores) >= 2
    accuracy = next(k for k in next(iter(scores.values())) if "accuracy" in k)
    for subject, row in scores.items():
        assert table.loc[subject, accuracy] == pytest.approx(row[accuracy], abs=1e-12)
    assert direct  # the run finished (metrics.json is written last)
