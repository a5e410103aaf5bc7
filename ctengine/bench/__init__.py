"""The benchmark suite behind ``ctengine bench``: each benchmark times ctengine and its baseline in one run.

Every benchmark module has ``run(workdir, *, quick, scheduler, workers) -> dict`` (the JSON-able
result) and ``ratios(result) -> dict`` (the headline ctengine / baseline ratios); most also have
``throughput(result) -> (ctengine, baseline)`` in slices/s. ``quick=True`` runs tiny sizes (seconds).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import re
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable

#: name -> module, imported when used
BENCHMARKS = {name: f"{__name__}.{name}" for name in ("ingest", "kernels", "loader", "training", "hybrid",
                                                        "scaling")}
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
COLUMNS = ("benchmark", "headline ratio", "ctengine slices/s", "baseline slices/s", "machine", "date")


def load(name: str) -> ModuleType:
    """The module of a benchmark (``full`` included)."""
    if name != "full" and name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return importlib.import_module(f"{__name__}.{name}")


def select(names: Iterable[str]) -> list[str]:
    """The benchmarks to run: the given ones in order, or for none or ``all`` every installed one."""
    names = list(dict.fromkeys(names))
    unknown = sorted(set(names) - {*BENCHMARKS, "all"})
    if unknown:
        raise ValueError(f"unknown benchmarks {unknown}; known: {', '.join(BENCHMARKS)} or all")
    if names and "all" not in names:
        return names
    return [name for name, module in BENCHMARKS.items() if importlib.util.find_spec(module) is not None]


def run_all(names: Iterable[str], workdir: Path, out_dir: Path, *, quick: bool = False,
            scheduler: str | None = None, workers: int | None = None,
            echo: Callable[[str], Any] = print) -> dict[str, dict]:
    """Run benchmarks in ``workdir/<name>``; write ``out_dir/<name>.json``, ``summary.json`` and ``summary.png``.

    ``summary.json`` and its plot merge this run's ratios into those already there.

    Returns ``{"results": {name: result}, "summary": {ratio: value}}``.
    """
    names = list(names)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, summary = {}, {}
    for i, name in enumerate(names, 1):
        module = load(name)
        echo(f"[{i}/{len(names)}] {name}{' (quick)' if quick else ''}")
        where = Path(workdir) / name
        where.mkdir(parents=True, exist_ok=True)
        results[name] = module.run(where, quick=quick, scheduler=scheduler, workers=workers)
        save(name, results[name], out_dir)
        ratios = module.ratios(results[name])
        summary.update(ratios)
        echo("      " + ", ".join(f"{label} {value:.2f}x" for label, value in ratios.items()))
    # the summary keeps the latest ratios of benchmarks not run this time
    previous = out_dir / "summary.json"
    merged = {**(json.loads(previous.read_text()) if previous.exists() else {}), **summary}
    previous.write_text(json.dumps(merged, indent=2))
    plot(merged, out_dir / "summary.png")
    return {"results": results, "summary": summary}


def save(name: str, result: dict, out_dir: Path) -> Path:
    """Write ``out_dir/<name>.json``."""
    path = Path(out_dir) / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def plot(summary: dict[str, float], path: Path) -> None:
    """Horizontal bars of the ratios on a log scale, 1x marked."""
    from ..figures import figure, save_png

    fig, ax = figure(7, 0.45 * len(summary) + 1)
    names = list(summary)
    ax.barh(names, [summary[n] for n in names], color="#2a9d8f")
    ax.axvline(1.0, color="#444", linewidth=0.8)
    for y, name in enumerate(names):
        ax.text(summary[name], y, f" {summary[name]:.2f}x", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_title("ctengine / baseline, same run (higher is better)", fontsize=10)
    save_png(fig, path)


def update_results_md(path: Path, summary: dict[str, float], results: dict[str, dict]) -> None:
    """Rewrite the generated table between the bench markers of ``path`` (appended when absent).

    One row per benchmark of ``results``; rows of other benchmarks already in the table stay.
    Everything outside the markers is left as it is.
    """
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    found = re.search(rf"^{re.escape(BEGIN)}\n(.*?)^{re.escape(END)}\n?", text, flags=re.S | re.M)
    rows = _table_rows(found.group(1)) if found else {}
    rows.update({name: _row(name, result, summary) for name, result in results.items()})
    order = [*BENCHMARKS, "full"]
    ordered = sorted(rows, key=lambda n: order.index(n) if n in order else len(order))
    block = "\n".join([BEGIN, "## Latest runs (written by `ctengine bench`)", "",
                       "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS),
                       *(rows[name] for name in ordered), END]) + "\n"
    if found:
        text = text[:found.start()] + block + text[found.end():]
    elif text:
        text += ("\n" if text.endswith("\n") else "\n\n") + block
    else:
        text = block
    path.write_text(text)


def _table_rows(block: str) -> dict[str, str]:
    """The data rows of a generated table by benchmark name."""
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in (COLUMNS[0], "") and not set(cells[0]) <= set("-"):
            rows[cells[0]] = line
    return rows


def _row(name: str, result: dict, summary: dict[str, float]) -> str:
    module = load(name)
    ratios = module.ratios(result)
    headline = next(iter(ratios), None)
    ours, base = module.throughput(result) if hasattr(module, "throughput") else (None, None)
    cells = [name, f"{headline}: {summary.get(headline, ratios.get(headline)):.2f}x" if headline else "-",
             _number(ours), _number(base), _machine(result.get("machine")),
             str(result.get("date", "-")) + (" (quick)" if result.get("quick") else "")]
    return "| " + " | ".join(cells) + " |"


def _number(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None and math.isfinite(value) else "-"


def _machine(machine: dict | str | None) -> str:
    """One cell: node, cores, memory and the 1-minute load at start and end."""
    if not isinstance(machine, dict):
        return str(machine or "-")
    load = f", load {machine['load_average_start'][0]:.1f} to {machine['load_average_end'][0]:.1f}" \
        if "load_average_end" in machine else ""
    return f"{machine['node']}, {machine['usable_cpus']} cores, {machine['memory_gib']:.0f} GiB{load}"


def repository() -> Path | None:
    """The ctengine checkout holding the working directory, if any (it has benchmarks/RESULTS.md)."""
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "benchmarks" / "RESULTS.md").is_file() and (folder / "pyproject.toml").is_file():
            return folder
    return None


def outputs(*, record: bool, out: Path | None, results_md: Path | None) -> tuple[Path, Path | None]:
    """(results folder, RESULTS.md or None) of ``ctengine bench``: ./bench-results and no table unless
    ``record``, which writes the checkout's benchmarks/results and benchmarks/RESULTS.md."""
    repo = repository() if record else None
    if record and repo is None and (out is None or results_md is None):
        raise ValueError("--record writes into a ctengine checkout: run it there, or give --out and --results-md")
    if out is None:
        out = repo / "benchmarks" / "results" if repo else Path("bench-results")
    if results_md is None and repo:
        results_md = repo / "benchmarks" / "RESULTS.md"
    return out, results_md


def run_suite(names: Iterable[str], *, full: bool = False, quick: bool = False, keep: bool = False,
              workdir: Path | None = None, out_dir: Path, results_md: Path | None = None,
              scheduler: str | None = None, workers: int | None = None,
              echo: Callable[[str], Any] = print) -> dict[str, dict]:
    """``ctengine bench``: the named benchmarks, or the full-scale run; results in ``out_dir``, the table in
    ``results_md``. A workdir made here is removed afterwards, except the full run's (it holds the store)."""
    made = workdir is None
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="ctengine_bench_"))
    try:
        if full:
            echo(f"full-scale run in {workdir}")
            result = load("full").run(workdir, keep=keep, scheduler=scheduler, workers=workers, echo=echo)
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            save("full", result, out_dir)
            done = {"results": {"full": result}, "summary": {}}
        else:
            done = run_all(names, workdir, out_dir, quick=quick, scheduler=scheduler, workers=workers, echo=echo)
    finally:
        if made and not full:
            shutil.rmtree(workdir, ignore_errors=True)
    if results_md:
        update_results_md(results_md, done["summary"], done["results"])
        echo(f"table updated in {results_md}")
    echo(f"results in {out_dir}/")
    return done


def add_script_options(parser) -> None:
    """The options every ``benchmarks/bench_*.py`` takes besides its sizes."""
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")


def run_script(name: str, args, **options: Any) -> dict:
    """What a ``benchmarks/bench_*.py`` does: run, print the JSON, write it to ``--json``."""
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"bench_{name}_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = load(name).run(workdir, quick=args.quick, scheduler=args.scheduler, **options)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return result
