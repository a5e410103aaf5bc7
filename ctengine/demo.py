"""``ctengine demo``: every stage on a synthetic cohort, ending in a report."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable


def run_demo(workdir: str | Path, *, patients: int = 24, epochs: int = 30, seed: int = 0, workers: int | None = None,
             scheduler: str | None = None, echo: Callable[[str], Any] = print) -> dict[str, Any]:
    """synth -> ingest -> verify -> features -> train -> evaluate -> report; returns the summary."""
    from .cluster import dask_client
    from .learn.evaluate import evaluate
    from .features import compute_features
    from .ingestion import ingest
    from .report import write_report
    from .synth import write_cohort
    from .learn.train import train
    from .store import verify

    work = Path(workdir)
    source, store = work / "covid-ctset", work / "store.zarr"
    throughput: dict[str, float] = {}
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    def stage(name: str, slices: int, t0: float) -> None:
        seconds[name] = time.perf_counter() - t0
        throughput[name] = slices / seconds[name] if seconds[name] else float("nan")

    echo(f"[1/6] synth: {patients} patients -> {source}")
    t0 = time.perf_counter()
    summary = write_cohort(source, patients=patients, seed=seed)
    stage("synth", summary.slices, t0)
    with dask_client(scheduler=scheduler, workers=workers) as client:
        echo(f"[2/6] ingest -> {store}")
        t0 = time.perf_counter()
        report = ingest([source], store, client=client)
        stage("ingest", report.slices, t0)
        checked = verify(store, sources=[source], client=client)
        echo(f"      {report.slices} slices, ratio {report.ratio:.2f}, verified: "
             f"{'OK' if checked.ok else f'{len(checked.mismatches)} mismatches'}")
        echo("[3/6] features: CT selection, lung masks, HU statistics")
        t0 = time.perf_counter()
        features = compute_features(store, client=client)
        stage("features", features.slices, t0)
    echo(f"[4/6] train: small ResNet-FPN, fold 1, {epochs} epochs")
    t0 = time.perf_counter()
    trained = train(store, fold=1, epochs=epochs, out=work / "run", seed=seed)
    stage("train", sum(h["slices"] for h in trained.history), t0)
    echo(f"      accuracy {trained.history[-1]['accuracy']:.3f} after {epochs} epochs")
    echo("[5/6] evaluate on the test split of fold 1")
    t0 = time.perf_counter()
    metrics = evaluate(store, fold=1, checkpoint=trained.checkpoint, out=work / "run/evaluation")
    stage("evaluate", int(metrics["images"]), t0)
    echo(f"      image accuracy {metrics['accuracy']:.3f}, COVID sensitivity {metrics['covid_sensitivity']:.3f}, "
         f"patients right/wrong {metrics['patients_correct']}/{metrics['patients_wrong']}")
    echo("[6/6] report")
    from . import __version__

    config = {"model": "small ResNet-FPN", "epochs": epochs, "fold": 1, "seed": seed, "patients": patients,
              "slices": report.slices, "ctengine": __version__, "checkpoint": str(trained.checkpoint)}
    page = write_report(work / "report", store=str(store), evaluation=work / "run/evaluation",
                        history=trained.history, metrics=metrics, throughput=throughput, seconds=seconds,
                        config=config, checkpoint=trained.checkpoint)
    total = time.perf_counter() - started
    echo(f"done in {total:.0f} s; slices/s: " + ", ".join(f"{k} {v:.0f}" for k, v in throughput.items()))
    echo(f"report: {page.resolve()}")
    ok = checked.ok and not report.failed_series and not features.failed_series
    return {"ok": ok, "seconds": total, "report": str(page), "metrics": metrics,
            "throughput": json.loads(json.dumps(throughput))}
