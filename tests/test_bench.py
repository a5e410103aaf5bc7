"""The benchmark suite: ``ctengine bench --quick`` end to end on the session cluster, the RESULTS.md table,
and the full-scale run's disk check and a tiny full run."""
from __future__ import annotations

import json
import math
import shutil
from collections import namedtuple

import pytest
from click.testing import CliRunner

from ctengine import bench
from ctengine.bench import full
from ctengine.cli import main

QUICK = ("ingest", "kernels", "loader", "scaling")

# dask-image's baseline reads TIFFs through pims, which uses a deprecated scikit-image plugin argument
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning:pims.*")


@pytest.fixture(scope="module")
def quick_run(client, tmp_path_factory):
    """``ctengine bench ingest kernels loader scaling --quick`` once: (result, out folder, RESULTS.md)."""
    tmp = tmp_path_factory.mktemp("bench")
    md = tmp / "RESULTS.md"
    md.write_text("# Results\n\nHand-written analysis.\n")
    result = CliRunner().invoke(main, ["bench", *QUICK, "--quick", "--workdir", str(tmp / "work"), "--out",
                                       str(tmp / "out"), "--results-md", str(md),
                                       "--scheduler", client.scheduler.address])
    return result, tmp / "out", md


def test_quick_run_writes_every_result(quick_run):
    result, out, _ = quick_run
    assert result.exit_code == 0, result.output + repr(result.exception)
    for name in QUICK:
        assert f"] {name} (quick)" in result.output
        data = json.loads((out / f"{name}.json").read_text())
        assert data["quick"] is True
        assert {"cpus", "platform", "python", "date", "load_average_start", "load_average_end"} <= set(data["machine"])
    assert json.loads((out / "ingest.json").read_text())["ctengine"]["slices"] == 120
    scaling = json.loads((out / "scaling.json").read_text())
    assert scaling["workers"] == [1, 2]
    for run in scaling["runs"].values():
        for stage in ("ingest", "features"):
            numbers = run[stage]
            assert numbers["tasks"] == 6 and numbers["slices"] == 72
            assert numbers["task_compute_total_s"] > 0 and numbers["tasks_per_s"] > 0
            shares = numbers["share_computing"] + numbers["share_idle_while_tasks_run"] + numbers["share_outside_tasks"]
            assert shares == pytest.approx(1.0)


def test_quick_run_ratios_and_plot(quick_run):
    _, out, _ = quick_run
    summary = json.loads((out / "summary.json").read_text())
    expected = set()
    for name in QUICK:
        ratios = bench.load(name).ratios(json.loads((out / f"{name}.json").read_text()))
        expected |= set(ratios)
        assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in ratios.values()), ratios
    assert set(summary) == expected
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_run_appends_the_table(quick_run):
    _, _, md = quick_run
    text = md.read_text()
    assert text.startswith("# Results\n\nHand-written analysis.\n\n" + bench.BEGIN + "\n")
    assert text.endswith(bench.END + "\n")
    for name in QUICK:
        assert f"\n| {name} | " in text
    assert "(quick)" in text


def _ingest_result(ratio: float) -> dict:
    machine = {"node": "vm", "usable_cpus": 2, "memory_gib": 24.0, "load_average_start": [2.0, 2.0, 2.0],
               "load_average_end": [3.0, 2.0, 2.0]}
    return {"machine": machine, "date": "2026-11-27", "speedup": {"per_series_loop": ratio, "dask_image": 2.0},
            "fraction_of_ceiling": 0.2, "ctengine": {"slices_per_s": 100.0 * ratio},
            "per_series_loop": {"slices_per_s": 100.0}}


def test_results_md_update_is_idempotent_and_keeps_the_rest(tmp_path):
    before = "# Benchmark results\n\nAnalysis | with a pipe.\n\n"
    after = "\n## Notes\n\nMore hand-written text.\n"
    old_rows = ("| training | old: 1.00x | 5 | 4 | vm | 2026-01-01 |\n"
                "| ingest | ingest vs per-series loop: 1.00x | 1 | 1 | vm | 2026-01-01 |\n")
    md = tmp_path / "RESULTS.md"
    md.write_text(f"{before}{bench.BEGIN}\n| benchmark | x |\n|---|---|\n{old_rows}{bench.END}\n{after}")
    result = _ingest_result(2.5)
    bench.update_results_md(md, bench.load("ingest").ratios(result), {"ingest": result})
    once = md.read_text()
    bench.update_results_md(md, bench.load("ingest").ratios(result), {"ingest": result})
    assert md.read_text() == once
    assert once.startswith(before + bench.BEGIN) and once.endswith(bench.END + "\n" + after)
    block = once[len(before):-len(after)]
    assert "| ingest | ingest vs per-series loop: 2.50x | 250 | 100 | vm, 2 cores, 24 GiB, load 2.0 to 3.0 | 2026-11-27 |" \
        in block
    assert "| training | old: 1.00x | 5 | 4 | vm | 2026-01-01 |" in block
    assert "2026-01-01 |\n| ingest" not in block and block.index("| ingest |") < block.index("| training |")


def test_results_md_block_is_appended_once(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nText without a trailing newline")
    result = _ingest_result(2.0)
    bench.update_results_md(md, {}, {"ingest": result})
    once = md.read_text()
    bench.update_results_md(md, {}, {"ingest": result})
    assert md.read_text() == once
    assert once.startswith("# Results\n\nText without a trailing newline\n\n" + bench.BEGIN)
    assert once.count(bench.BEGIN) == 1


def test_full_refuses_a_small_disk(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100 * 10**9, 98 * 10**9, 2 * 10**9))
    work = tmp_path / "work"
    result = CliRunner().invoke(main, ["bench", "--full", "--workdir", str(work), "--out", str(tmp_path / "out"),
                                       "--results-md", str(tmp_path / "RESULTS.md")])
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "needs about" in message and "63,849 slices" in message and "only 2.0 GB is free" in message
    need = full.disk_needed(full.cohort_plan())
    assert 33.5e9 < need["tiffs"] < 37e9 and 14e9 < need["store"] < 18e9
    assert list(work.iterdir()) == [] and not (tmp_path / "RESULTS.md").exists()


def test_full_runs_alone():
    result = CliRunner().invoke(main, ["bench", "--full", "ingest"])
    assert result.exit_code == 2 and "--full runs alone" in result.output


def test_full_tiny_run(client, tmp_path):
    result = full.run(tmp_path, patients=1, slices_per_series=4, scheduler=client.scheduler.address,
                      progress=False, echo=lambda line: None)
    assert result["slices"] == 12
    for name in ("synth", "ingest", "features"):
        stage = result["stages"][name]
        assert stage["slices"] == 12 and stage["wall_s"] > 0
        assert 0.05 < stage["peak_memory_gib"] < 64 and stage["disk_bytes"] > 12 * 512 * 512 // 4
    assert result["disk"]["tiffs_bytes"] > 12 * 512 * 512 * 2 and result["disk"]["store_bytes"] > 0
    assert result["disk"]["sidecar_bytes"] > 0 and not result["tiffs_kept"]
    assert not (tmp_path / "src").exists() and (tmp_path / "store.zarr").is_dir()
    assert full.throughput(result)[0] > 0
    rates = result["disk_rates"]
    assert rates["read_bytes_per_s"] > 0 and rates["write_bytes_per_s"] > 0 and rates["sample_bytes"] > 0
    assert not (tmp_path / "_disk_rate.bin").exists()
    assert full.ratios(result)["full ingest / disk-bound time"] == result["ingest_vs_disk_bound"] > 0


def test_bench_writes_its_own_folder_and_records_only_when_asked(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "run_suite", lambda names, **kw: calls.append(kw))
    repo = bench.repository()
    assert repo is not None  # the tests run inside a checkout
    monkeypatch.chdir(repo)
    assert CliRunner().invoke(main, ["bench", "ingest", "--quick"]).exit_code == 0
    assert calls[-1]["out_dir"] == bench.Path("bench-results") and calls[-1]["results_md"] is None
    assert CliRunner().invoke(main, ["bench", "ingest", "--record"]).exit_code == 0
    assert calls[-1]["out_dir"] == repo / "benchmarks" / "results"
    assert calls[-1]["results_md"] == repo / "benchmarks" / "RESULTS.md"
    monkeypatch.chdir(tmp_path)
    refused = CliRunner().invoke(main, ["bench", "ingest", "--record"])
    assert refused.exit_code == 2 and "checkout" in refused.output
