"""The ``ctengine`` command: a thin layer over the library."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from .bench import BENCHMARKS
from .cli_errors import DEBUG_ENV, Group, raise_if_disk_full
from .constants import DEFAULT_INTERCEPT, DEFAULT_SLOPE


def _storage_options(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object")
    return value


def _client(scheduler: str | None, workers: int | None):
    from .cluster import dask_client

    return dask_client(scheduler=scheduler, workers=workers)


def _require_store(store: str, storage_options: dict | None) -> None:
    """Refuse a location that is not a store before a cluster starts or a checkpoint loads."""
    from .store import open_store

    open_store(store, storage_options=storage_options)


cluster_options = [
    click.option("--workers", type=click.IntRange(min=1), default=None,
                 help="Worker processes of the local Dask cluster (default: one per core)."),
    click.option("--scheduler", default=None, help="Address of an existing Dask scheduler (tcp://host:8786)."),
]


def check_cluster_options(workers: int | None, scheduler: str | None) -> None:
    """Refuse ``--workers`` with ``--scheduler`` (a usage error: the scheduler's cluster has its own workers)."""
    if workers and scheduler:
        raise click.UsageError(f"give --workers N (a local cluster) or --scheduler {scheduler} (its own workers), "
                               f"not both")


def with_cluster(func):
    """``--workers`` and ``--scheduler``, refused together before the command runs."""
    @functools.wraps(func)
    def checked(*args, **kwargs):
        check_cluster_options(kwargs.get("workers"), kwargs.get("scheduler"))
        return func(*args, **kwargs)

    for option in reversed(cluster_options):
        checked = option(checked)
    return checked


def device_option(default: str, help_text: str):
    """``--device``: cpu, gpu or auto (``cuda`` is accepted as a spelling of gpu)."""
    return click.option("--device", type=click.Choice(["auto", "cpu", "gpu", "cuda"]), default=default,
                        show_default=True, help=f"{help_text} auto: the GPU when one is usable; cuda: same as gpu.")


storage_option = click.option("--storage-options", default=None,
                              help="JSON object for fsspec (endpoint, credentials) of a remote store.")


@click.group(cls=Group)
@click.version_option(package_name="ctengine")
@click.option("--debug", is_flag=True, help=f"Show the traceback of an unexpected error (also: {DEBUG_ENV}=1).")
def main(debug) -> None:
    """ctengine: high-throughput preprocessing and features for lung CT (COVID-CTset)."""


@main.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--patients", type=click.IntRange(min=1), default=None,
              help="Number of patients (default 12; with --base, per base scan: default 2).")
@click.option("--slices-per-series", type=click.IntRange(min=1), default=None,
              help="Slices in every series (default: from thickness).")
@click.option("--like", type=click.Choice(["covid-ctset"]), default=None,
              help="Mirror the real cohort (377 patients, thickness per series).")
@click.option("--fraction", type=click.FloatRange(min=0, min_open=True, max=1), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--flat", is_flag=True, help="Also write the flat Training&Validation layout.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes (default: one per core).")
@click.option("--base", "bases", multiple=True, type=click.Path(exists=True),
              help="A real chest CT (NIfTI, NRRD or DICOM folder), repeatable: --patients patients made from each, "
                   "lesions inserted in half of them at faint, medium and heavy severity, truth in OUT/truth.zarr.")
def synth(out, patients, slices_per_series, like, fraction, seed, flat, workers, bases) -> None:
    """Write a synthetic cohort in the exact COVID-CTset layout to OUT."""
    from .synth import write_cohort

    if like and patients:
        raise click.UsageError("give --patients or --like, not both")
    if bases:
        if like or flat or slices_per_series or workers:
            raise click.UsageError("--base takes --patients (per base) and --seed only")
        from .synth.hybrid_cohort import write_hybrid_cohort

        rows = write_hybrid_cohort(bases, out, patients_per_base=patients or 2, seed=seed)
        covid = rows[rows["covid"]]
        severities = ", ".join(f"{n} {name}" for name, n in covid["severity"].value_counts(sort=False).items())
        click.echo(f"wrote {len(rows)} patients from {len(bases)} base scan(s) to {out}: {len(covid)} with "
                   f"lesions ({severities}; {int(covid['lesion_voxels'].sum())} lesion voxels), "
                   f"{len(rows) - len(covid)} without")
        return
    summary = write_cohort(out, patients=None if like else (patients or 12), slices_per_series=slices_per_series,
                           like=like, fraction=fraction, seed=seed, flat=flat, workers=workers)
    click.echo(f"wrote {summary.slices} slices of {summary.patients} patients ({summary.covid_slices} covid, "
               f"{summary.normal_slices} normal) in {summary.seconds:.1f} s "
               f"({summary.slices / max(summary.seconds, 1e-9):.0f} slices/s) to {out}")


@main.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--store", required=True, help="Store path or fsspec URL (created if missing).")
@click.option("--details", type=click.Path(exists=True, dir_okay=False), help="Patient_details.csv")
@click.option("--metadata", type=click.Path(exists=True, dir_okay=False), help="Patients_metadata.csv")
@click.option("--labels", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Label CSVs (filename,class): all.csv, train1.csv, ... (repeatable).")
@click.option("--strict", is_flag=True, help="Exit non-zero if any file is quarantined.")
@click.option("--storage-options", default=None, help="JSON object for fsspec (endpoint, credentials).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@with_cluster
def ingest(sources, store, details, metadata, labels, strict, storage_options, as_json, workers, scheduler) -> None:
    """Ingest COVID-CTset SOURCES (tree, zips or flat folder) into a Zarr v3 STORE."""
    from .ingestion import ingest as run_ingest
    from .store import resolve
    from .store.location import check_location

    check_location(resolve(store), "a")  # a regular file refused before the cluster starts
    with _client(scheduler, workers) as client:
        report = run_ingest(sources, store, details=details, metadata=metadata, labels=list(labels) or None,
                            client=client, storage_options=_storage_options(storage_options))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_ingest(report)
    raise_if_disk_full((reason for _, reason in report.failed_series), {"store": store})
    if report.failed_series or (strict and report.quarantined):
        sys.exit(1)


def _print_ingest(report) -> None:
    from .ingest_report import summary_lines

    if report.nothing_written:
        click.echo(f"store {report.store} is complete: nothing to write ({report.slices} slices, "
                   f"{report.series_skipped} series)")
    else:
        click.echo(f"ingested {report.slices_written} slices in {report.series_written} series "
                   f"({report.series_skipped} already complete) in {report.seconds:.1f} s: "
                   f"{report.slices_per_second:.0f} slices/s (cluster start-up not counted), "
                   f"{report.bytes_raw / 1e6:.0f} MB raw -> "
                   f"{report.bytes_stored / 1e6:.0f} MB stored (ratio {report.ratio:.2f}) "
                   f"+ {report.bytes_pyramid / 1e6:.0f} MB pyramid")
    for series, reason in report.healed:
        click.echo(f"healed: {series}: {reason}")
    for location, reason in report.quarantined:
        click.echo(f"quarantined: {location}: {reason}", err=True)
    for location, reason in report.skipped:
        click.echo(f"skipped: {location}: {reason}", err=True)
    for series, reason in report.failed_series:
        click.echo(f"failed series: {series}: {reason}", err=True)
    if report.quarantined or report.skipped:
        click.echo(f"{len(report.quarantined)} entries quarantined and {len(report.skipped)} skipped "
                   f"(listed in the store's quarantine table)", err=True)
    for line in summary_lines(report):
        click.echo(line)


@main.command()
@click.argument("store")
@click.option("--source", "sources", multiple=True, type=click.Path(exists=True),
              help="Also compare against these sources (repeatable).")
@storage_option
@with_cluster
def verify(store, sources, storage_options, workers, scheduler) -> None:
    """Re-read STORE and compare every slice's checksum; exit 1 on any mismatch."""
    from .store import verify as run_verify

    _require_store(store, options := _storage_options(storage_options))
    with _client(scheduler, workers) as client:
        report = run_verify(store, sources=sources, client=client, storage_options=options, progress=True)
    for what, reason in report.mismatches:
        click.echo(f"MISMATCH {what}: {reason}", err=True)
    for series, reason in report.failed_series:
        click.echo(f"failed series: {series}: {reason}", err=True)
    failed = f", {len(report.failed_series)} failed series" if report.failed_series else ""
    click.echo(f"checked {report.slices_checked} stored slices and {report.sources_checked} source files: "
               f"{'OK' if report.ok else f'{len(report.mismatches)} mismatch(es){failed}'}")
    if not report.ok:
        sys.exit(1)


@main.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True)
@storage_option
def info(store, as_json, storage_options) -> None:
    """Patients, series and slices per label, bytes and compression ratio of STORE."""
    from .store import store_info

    summary = store_info(store, storage_options=_storage_options(storage_options))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"store {store}")
    for label, counts in summary["labels"].items():
        click.echo(f"  {label:8s} {counts['patients']:5d} patients {counts['series']:6d} series "
                   f"{counts['slices']:8d} slices")
    click.echo(f"  raw {summary['bytes_raw'] / 1e6:.1f} MB -> stored {summary['bytes_stored'] / 1e6:.1f} MB "
               f"(ratio {summary['ratio']:.2f}); quarantined entries: {summary['quarantined']}, "
               f"skipped: {summary['skipped']}")
    for key, what in (("series_spacing_unknown", "pixel spacing"), ("series_thickness_unknown", "slice thickness")):
        if summary[key]:
            click.echo(f"  {what} unknown for {summary[key]} of {summary['series']} series (recorded as \"unknown\")")


@main.command()
@click.argument("store")
@device_option("cpu", "Numba CPU kernels, or CUDA kernels on the workers' GPU.")
@storage_option
@with_cluster
def features(store, device, storage_options, workers, scheduler) -> None:
    """CT selection, lung masks and HU statistics for every series of STORE."""
    from .features import compute_features
    from .store import features_path

    _require_store(store, _storage_options(storage_options))
    with _client(scheduler, workers) as client:
        report = compute_features(store, device=device, client=client,
                                  storage_options=_storage_options(storage_options))
    click.echo(f"features of {report.slices_computed} slices in {report.series_computed} series "
               f"({report.series_skipped} already done) in {report.seconds:.1f} s "
               f"({report.slices_per_second:.0f} slices/s, cluster start-up not counted); "
               f"tables in {features_path(store)}/")
    if report.spacing_unknown:
        click.echo(f"{len(report.spacing_unknown)} series without a pixel spacing: lung-mask sizes at the nominal "
                   f"0.7 mm per 512 pixels, areas and volumes NaN ({', '.join(report.spacing_unknown[:5])}"
                   f"{', ...' if len(report.spacing_unknown) > 5 else ''})")
    for series, reason in report.failed_series:
        click.echo(f"failed series: {series}: {reason}", err=True)
    raise_if_disk_full((reason for _, reason in report.failed_series), {"store": features_path(store)})
    if report.failed_series:
        sys.exit(1)


@main.command()
@click.argument("store")
@click.option("--fold", type=click.IntRange(1, 5), default=1, show_default=True)
@click.option("--model", type=click.Choice(["small", "resnet50v2-fpn"]), default="small", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Default: 30 for small, 20 for resnet50v2-fpn (the paper).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lr", type=float, default=None, help="Nadam learning rate (default 1e-3 small, 1e-4 full).")
@click.option("--out", type=click.Path(file_okay=False), default="runs/fold1", show_default=True)
@device_option("auto", "Where the network trains.")
@click.option("--seed", type=int, default=0, show_default=True)
@storage_option
def train(store, fold, model, epochs, batch_size, lr, out, device, seed, storage_options) -> None:
    """Train a COVID/normal slice classifier on fold FOLD of STORE."""
    from .learn.train import describe_splits, fold_catalog, split_lines, train as run_train
    from .store import open_store

    options = _storage_options(storage_options)
    catalog = fold_catalog(open_store(store, storage_options=options).catalog, fold, seed=seed)
    lines = split_lines(describe_splits(catalog, fold))
    click.echo("\n  ".join([f"training {model} on fold {fold} of {store}:", *lines]))
    result = run_train(store, fold=fold, model=model, epochs=epochs, batch_size=batch_size, lr=lr, out=out,
                       device=device, seed=seed, storage_options=options)
    for row in result.history:
        click.echo("epoch {epoch}: loss {loss:.4f} accuracy {accuracy:.3f} ({slices_per_s:.0f} slices/s)".format(**row)
                   + (f" validation accuracy {row['val_accuracy']:.3f}" if "val_accuracy" in row else ""))
    click.echo(f"checkpoint: {result.checkpoint}")


@main.command()
@click.argument("store")
@click.option("--fold", type=click.IntRange(1, 5), required=True)
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--out", type=click.Path(file_okay=False), default="evaluation", show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.10, show_default=True,
              help="Patient is COVID when at least this fraction of its selected SR_2 slices is.")
@device_option("auto", "Where the network runs.")
@storage_option
def evaluate(store, fold, checkpoint, out, threshold, device, storage_options) -> None:
    """Evaluate CHECKPOINT on the test split of fold FOLD: predictions.csv, metrics.json, plots."""
    from .learn.evaluate import evaluate as run_evaluate
    from .learn.metrics import metrics_markdown

    _require_store(store, _storage_options(storage_options))
    metrics = run_evaluate(store, fold=fold, checkpoint=checkpoint, out=out, threshold=threshold, device=device,
                           storage_options=_storage_options(storage_options))
    click.echo(metrics_markdown(metrics, title=f"Fold {fold}"))
    click.echo(f"written to {out}/")


@main.command()
@click.argument("patient_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.10, show_default=True)
@click.option("--series", default="SR_2", show_default=True, help="Series folder used for the decision.")
@device_option("auto", "Where the network runs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--spacing", type=float, nargs=2, default=None, metavar="Y X",
              help="Pixel spacing of the series in mm (default: unknown, as a store series without metadata).")
@click.option("--slope", type=float, default=DEFAULT_SLOPE, show_default=True,
              help="Rescale slope: HU = raw * slope + intercept.")
@click.option("--intercept", type=float, default=DEFAULT_INTERCEPT, show_default=True, help="Rescale intercept (HU).")
@click.option("--explain", type=click.Path(file_okay=False), default=None, metavar="OUT",
              help="Also write Grad-CAM overlays of the selected slices to OUT/gradcam.png.")
def predict(patient_dir, checkpoint, threshold, series, device, as_json, spacing, slope, intercept, explain) -> None:
    """Select, classify and decide on one patient's folder of TIFFs."""
    from .learn.predict import predict_patient

    options = dict(checkpoint=checkpoint, threshold=threshold, series=series, device=device,
                   spacing=tuple(spacing) if spacing else None, slope=slope, intercept=intercept)
    from .learn.explain import explain_patient

    result = (explain_patient(patient_dir, out=explain, **options) if explain
              else predict_patient(patient_dir, **options))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for row in result["rows"]:
        verdict = f"{row['prediction']} ({row['probability']:.3f})" if row["selected"] else "not selected"
        click.echo(f"{row['file']}: dark pixels {row['dark_count']:6d}  {verdict}")
    for path, reason in result["skipped"]:
        click.echo(f"skipped {path}: {reason}", err=True)
    click.echo(f"verdict: {result['verdict'].upper()}: {result['covid_slices']} of {result['selected']} selected "
               f"slices of {result['series']} predicted COVID ({result['fraction']:.1%}; threshold "
               f"{result['threshold']:.0%})")
    if explain:
        click.echo(f"Grad-CAM of {len(result['explain']['files'])} slices in {result['explain']['png']}")


@main.command()
@click.option("--workdir", type=click.Path(file_okay=False), default="ctengine-demo", show_default=True)
@click.option("--patients", type=click.IntRange(min=4), default=24, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@with_cluster
def demo(workdir, patients, epochs, seed, workers, scheduler) -> None:
    """The whole pipeline on a synthetic cohort: synth, ingest, features, train, evaluate, report."""
    from .demo import run_demo

    result = run_demo(workdir, patients=patients, epochs=epochs, seed=seed, workers=workers, scheduler=scheduler,
                      echo=click.echo)
    if not result["ok"]:
        sys.exit(1)


@main.command()
@click.argument("names", nargs=-1, type=click.Choice([*BENCHMARKS, "all"]))
@click.option("--full", is_flag=True, help="The full-scale run instead: 63,849 synthetic slices, ingest, features.")
@click.option("--quick", is_flag=True, help="Tiny sizes, seconds per benchmark (results go to ./bench-results).")
@click.option("--keep", is_flag=True, help="Keep the TIFFs of the full run (default: deleted at the end).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where inputs and stores are written (default: a temporary folder, removed afterwards).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the JSON results and summary plot (default ./bench-results; with --record "
                   "benchmarks/results of this checkout).")
@click.option("--results-md", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Markdown file whose generated table is updated (default: none; with --record "
                   "benchmarks/RESULTS.md of this checkout).")
@click.option("--record", is_flag=True,
              help="Record the run in this checkout: JSON in benchmarks/results, table in benchmarks/RESULTS.md.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes of the local Dask cluster (default: one per core); also the loader's threads "
                   "and DataLoader workers, and the larger worker count of the scaling run (default 2).")
@click.option("--scheduler", default=None, help="Address of an existing Dask scheduler (tcp://host:8786).")
def bench(names, full, quick, keep, workdir, out, results_md, record, workers, scheduler) -> None:
    """Run benchmarks NAMES (default all), each against its baseline in the same run.

    Results go to ./bench-results; the committed results change only with --record.
    """
    from .bench import outputs, run_suite, select
    from .bench.full import DiskSpaceError

    check_cluster_options(workers, scheduler)
    if full and (names or quick):
        raise click.UsageError("--full runs alone: give no NAMES and no --quick")
    try:
        out, results_md = outputs(record=record, out=out, results_md=results_md)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        run_suite(select(names), full=full, quick=quick, keep=keep, workdir=workdir, out_dir=out, results_md=results_md,
                  scheduler=scheduler, workers=workers, echo=click.echo)
    except DiskSpaceError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":  # pragma: no cover
    main()
