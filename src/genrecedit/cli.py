"""``genrecedit``: one CLI over the run entry points. Every command takes a YAML config (or a bundled name) and
``-o section.key=value`` overrides, and writes into its own run directory."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from genrecedit.errors import ConfigError, GenRecEditError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="GenRecEdit: inject cold-start items into a generative recommender without training.")

ConfigArg = Annotated[Optional[str], typer.Option("--config", "-c", help="YAML file or bundled config name")]
Overrides = Annotated[Optional[list[str]], typer.Option("--set", "-o", help="override, e.g. -o train.epochs=3")]
RunDir = Annotated[Path, typer.Option("--run-dir", "-r", help="run directory")]
Device = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1 …")]


def _config(config: str | None, overrides: list[str] | None, device: str | None):
    from genrecedit.config import load_config

    extra = list(overrides or []) + ([f"device={device}"] if device else [])
    return load_config(config, extra)


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def prepare(config: ConfigArg = None, overrides: Overrides = None, run_dir: RunDir = Path("runs/prepare"),
            device: Device = None) -> None:
    """Load data, split it, embed item text and fit the SID tokenizer; prints the split summary and SID stats."""
    from genrecedit.runs.prepare_report import prepare_report

    try:
        typer.echo(prepare_report(_config(config, overrides, device), run_dir))
    except GenRecEditError as err:
        _fail(err)


@app.command()
def train(config: ConfigArg = None, overrides: Overrides = None, run_dir: RunDir = Path("runs/train"),
          device: Device = None, resume: bool = True) -> None:
    """Train the TIGER backbone (early stopping on validation NDCG@10; resumes an interrupted run). Runs under
    ``torchrun --nproc_per_node=N`` too (DDP; ``train.batch_size`` is the global batch)."""
    from genrecedit.model.distributed import is_main_process
    from genrecedit.runs.backbone import train_backbone

    try:
        _, result = train_backbone(_config(config, overrides, device), run_dir, resume)
    except GenRecEditError as err:
        _fail(err)
    if not is_main_process():
        return
    typer.echo(f"best epoch {result.best_epoch}: valid NDCG@10 {result.best_valid_ndcg10:.4f} "
               f"({result.train_seconds:.0f}s); checkpoint in {run_dir / 'model'}")


@app.command()
def evaluate(run_dir: RunDir, overrides: Overrides = None,
             edits: Annotated[Optional[Path], typer.Option(help="edit artifact directory to apply")] = None,
             name: str = "metrics", device: Device = None) -> None:
    """Evaluate a trained run (optionally with an edit artifact) and the popularity baselines on test."""
    from genrecedit.runs.evaluate_report import evaluate_report

    try:
        typer.echo(evaluate_report(run_dir, list(overrides or []) + ([f"device={device}"] if device else []),
                                   edits, name))
    except GenRecEditError as err:
        _fail(err)


@app.command()
def edit(run_dir: RunDir, overrides: Overrides = None,
         out: Annotated[Optional[Path], typer.Option(help="where to write the artifact (default: run dir)")] = None,
         device: Device = None) -> None:
    """Inject every item absent from training into a trained run with GenRecEdit (no training)."""
    from genrecedit.runs.backbone import load_run
    from genrecedit.runs.edit import edit_run

    try:
        run = load_run(run_dir, list(overrides or []) + ([f"device={device}"] if device else []))
        artifact, report = edit_run(run, out or run_dir)
    except GenRecEditError as err:
        _fail(err)
    lam = artifact.batches[-1].meta["lam"]
    refit = f" (re-fit from {run.config.edit.lam:g})" if lam != run.config.edit.lam else ""
    typer.echo(f"edited {report.n_items} items ({report.n_requests} requests) at layers {report.layers}, "
               f"λ {lam:.4g}{refit}, in "
               f"{report.timings_s['update_total']:.1f}s; efficacy before {report.efficacy['before']} "
               f"after {report.efficacy['after']}")


@app.command()
def compact(artifact_dir: Annotated[Path, typer.Argument(help="an edit artifact directory (holds edits.json)")],
            trigger: Annotated[str, typer.Option(help="the trigger mode it is decoded with: one_one or all (prefix "
                                                      "and preserve cannot be compacted exactly)")] = "one_one",
            keep_newest: Annotated[int, typer.Option(help="batches left as they are on top (rollback stays exact "
                                                          "for them)")] = 0,
            out: Annotated[Optional[Path], typer.Option(help="where to write it (default: in place, atomically)")]
            = None) -> None:
    """Fold an edit artifact's batches (all but the newest --keep-newest) into one consolidated batch: identical
    outputs under one_one / all triggering, one file instead of thousands. Not for a service's state dir (its
    registry records every batch)."""
    from genrecedit.edit.artifact import EditArtifact
    from genrecedit.serving.registry import REGISTRY_FILE

    if (Path(artifact_dir).resolve().parent.parent / REGISTRY_FILE).exists():
        _fail(ValueError(f"{artifact_dir} belongs to a service's state dir, whose registry records every batch: "
                         "compacting it there would break its restore"))
    try:
        artifact = EditArtifact.load(artifact_dir)
        small = artifact.compacted(trigger, keep_newest)  # type: ignore[arg-type]
    except (GenRecEditError, ValueError) as err:
        _fail(err)
    small.save(out or artifact_dir)
    typer.echo(f"compacted {len(artifact.batches) - keep_newest} batches into one; {len(small.batches)} batches in "
               f"{out or artifact_dir}")


@app.command()
def coldstart(run_dir: RunDir, overrides: Overrides = None,
              edits: Annotated[Optional[Path], typer.Option(help="edit artifact to mix the prior into")] = None,
              out: Annotated[Optional[Path], typer.Option(help="output directory (default: the run)")] = None,
              name: str = "coldstart",
              valid_max_cases: Annotated[Optional[int], typer.Option(
                  help="select on a seeded sample of this many validation cases (default: all)")] = None,
              valid_users: Annotated[str, typer.Option(
                  help="whose validation cases select: 'test', the split's users (with filter_test_users, those "
                       "with a test interaction), or 'all', also the users the filter left out (never trained on; "
                       "more evidence where few users reach the test period)")] = "test",
              max_warm_drop: float = 0.03, max_item_share: float = 0.05,
              upper: Annotated[bool, typer.Option(
                  "--upper/--point", help="hold the warm-drop bound at the upper end of its 95 % interval on "
                                          "validation (default) or at the estimate")] = True,
              stratified: Annotated[bool, typer.Option(
                  "--stratified/--one-setting", help="one setting per kind of history (its last item new or not), "
                                                     "each within the bounds on its own cases (default), or one "
                                                     "setting for all held at --plan-window's mix")] = True,
              allocate: Annotated[bool, typer.Option(
                  "--allocate/--per-stratum", help="--stratified: hold the warm-drop bound for both kinds of "
                                                   "history together at --plan-window's mix, each weighed by its "
                                                   "share of the warm NDCG, or within each")] = False,
              plan_window: Annotated[float, typer.Option(
                  help="--one-setting, --allocate: hold the warm-drop bound at the request mix (share of histories "
                       "ending with a new item) of this latest share of the validation period; 1: the whole "
                       "period's mix")] = 0.2,
              plan_trend: Annotated[bool, typer.Option(
                  help="--one-setting: plan at the share's straight-line trend read at the middle of a next "
                       "period as long as validation's (never below --plan-window's)")] = False,
              objective: Annotated[str, typer.Option(
                  help="what selection maximises within the bounds: 'cold' (cold Recall@10 among settings that "
                       "also beat every baseline kept to the bounds on overall NDCG@10) or 'overall' "
                       "(overall NDCG@10)")] = "cold",
              popularity: Annotated[bool, typer.Option(
                  "--popularity/--no-popularity", help="also try calibrated insertions whose re-ranking warm model "
                                                       "reads the beam items' interaction counts")] = True,
              insertion_window: Annotated[Optional[float], typer.Option(
                  help="fit and choose the calibrated insertion on this latest share of the validation period "
                       "(by time; 1: all of it) instead of the rule the forward check chooses")] = None,
              spend_rerank: Annotated[Optional[bool], typer.Option(
                  "--spend-rerank/--no-spend-rerank", help="let a re-ranking insertion spend the warm NDCG its "
                                                           "re-ranking gains on validation, or also hold its warm "
                                                           "drop against its own re-ranked beams, instead of the "
                                                           "rule the forward check chooses")] = None,
              exposure_cap: Annotated[bool, typer.Option(
                  "--exposure-cap/--no-exposure-cap", help="serve the calibrated insertion through an exposure cap "
                                                           "at --max-item-share: no new item enters more than that "
                                                           "share of the lists served, counted as they are "
                                                           "served")] = True,
              adopt: Annotated[bool, typer.Option(help="write the recipe (the prior or the calibrated insertion, "
                                                       "the better on validation) into the run (the service then "
                                                       "serves it)")] = False,
              device: Device = None) -> None:
    """Text-only cold start: choose the content prior, the calibrated insertion and the baselines' settings on
    validation, then score them side by side on test (paired intervals, exposure)."""
    from genrecedit.edit.artifact import EditArtifact
    from genrecedit.runs.backbone import load_run
    from genrecedit.runs.coldstart import Bounds, ColdstartSpec, InsertionGrid, coldstart as run_coldstart

    try:
        run = load_run(run_dir, list(overrides or []) + ([f"device={device}"] if device else []))
        artifact = EditArtifact.load(edits, run.base_hash) if edits else None
        rules = {}  # either option given: that one rule, no forward check
        if insertion_window is not None or spend_rerank is not None:
            rules = {"rules": ((1.0 if insertion_window is None else insertion_window, spend_rerank is not False),)}
        spec = ColdstartSpec(bounds=Bounds(max_warm_drop=max_warm_drop, max_item_share=max_item_share, upper=upper,
                                           plan_window=plan_window, stratified=stratified,
                                           plan_trend=plan_trend, allocate=allocate),
                             insertion=InsertionGrid(objective=objective,
                                                     popularity=(False, True) if popularity else (False,),
                                                     cap=exposure_cap, **rules),
                             valid_max_cases=valid_max_cases, valid_users=valid_users)
        report = run_coldstart(run, out or run_dir, spec, artifact, name, echo=typer.echo)
        if adopt and report["recipe"] is not None:
            from genrecedit.runs.coldstart import adopt

            adopt(run_dir, report, out or run_dir, name)
            typer.echo(f"adopted into {run_dir / 'config.yaml'}: {report['recipe']}")
    except GenRecEditError as err:
        _fail(err)


@app.command()
def merge(spec: Annotated[Path, typer.Argument(help="merge spec YAML (models, merge_method, base_model, …)")],
          out: Annotated[Path, typer.Option("--out", help="run directory to write the merged model into")],
          overwrite: Annotated[bool, typer.Option(help="replace an existing output directory")] = False) -> None:
    """Merge trained checkpoints (linear, task arithmetic, TIES, DARE) into a run dir that evaluate/edit accept."""
    from genrecedit.merging.merge import merge_models
    from genrecedit.merging.spec import load_spec

    try:
        result = merge_models(load_spec(spec), out, overwrite)
    except GenRecEditError as err:
        _fail(err)
    weights = ", ".join(f"{w:.3g}" for w in result.weights)
    typer.echo(f"merged {len(result.weights)} models (weights {weights}) into {result.run_dir} "
               f"(weights hash {result.weights_hash[:12]})")


@app.command()
def sweep(run_dir: RunDir, overrides: Overrides = None,
          lam: Annotated[str, typer.Option(help="comma-separated λ values")] = "300,1000,3000",
          n: Annotated[str, typer.Option(help="comma-separated pseudo-histories per item")] = "5",
          max_warm_drop: float = 0.05, device: Device = None) -> None:
    """Choose λ and n on validation cases (docs/method.md §5.10): best overall NDCG@10 with warm drop ≤ max."""
    from genrecedit.runs.backbone import load_run
    from genrecedit.runs.sweep import format_sweep, sweep as run_sweep

    extra = ["eval.cases=valid", *(overrides or []), *([f"device={device}"] if device else [])]
    try:
        result = run_sweep(load_run(run_dir, extra), [float(x) for x in lam.split(",")],
                           [int(x) for x in n.split(",")], run_dir, max_warm_drop)
    except GenRecEditError as err:
        _fail(err)
    typer.echo(format_sweep(result))


@app.command()
def calibrate(run_dir: RunDir, overrides: Overrides = None,
              by: Annotated[str, typer.Option(help="warm_drop (docs/method.md §5.10's bound) or exposure (the "
                                                   "chosen cell's share of top-10 slots cold items take on warm "
                                                   "cases)")] = "warm_drop",
              target: Annotated[Optional[float], typer.Option(help="the bound (default: from the sweep)")] = None,
              sweep_json: Annotated[Optional[Path], typer.Option(
                  "--sweep", help="the sweep that chose λ and n (default <run>/sweep.json)")] = None,
              lam_min: Annotated[Optional[float], typer.Option(help="default: the sweep's chosen λ")] = None,
              lam_max: Annotated[Optional[float], typer.Option(help="default: 16 × λ min")] = None,
              steps: Annotated[int, typer.Option(help="bisections in log λ after the two ends")] = 5,  # STEPS
              device: Device = None) -> None:
    """Re-fit λ for the edit that ships (it learns from the whole validation period, the sweep's edit from half):
    the smallest λ ≥ the chosen one whose shipped edit keeps the bound on validation. Then: edit -o edit.lam=…"""
    import json

    from genrecedit.runs.backbone import load_run
    from genrecedit.runs.calibrate import calibrate as run_calibrate, format_calibration, from_sweep

    extra = ["eval.cases=valid", *(overrides or []), *([f"device={device}"] if device else [])]
    try:
        path = sweep_json or run_dir / "sweep.json"
        if path.is_file():
            swept_target, swept_lam, swept_n = from_sweep(json.loads(path.read_text()), by)
            extra.insert(1, f"knowledge.histories_per_item={swept_n}")  # the chosen n, unless -o says otherwise
            target = swept_target if target is None else target
            lam_min = swept_lam if lam_min is None else lam_min
        elif target is None or lam_min is None:
            raise FileNotFoundError(f"no sweep at {path}: run `genrecedit sweep` first, or pass --target and "
                                    "--lam-min")
        result = run_calibrate(load_run(run_dir, extra), target, run_dir, by, lam_min, lam_max, steps)
    except (GenRecEditError, FileNotFoundError) as err:
        _fail(err)
    typer.echo(format_calibration(result))


@app.command()
def ablate(run_dir: RunDir, overrides: Overrides = None,
           seeds: Annotated[str, typer.Option(help="comma-separated seeds")] = "0,1,2",
           out: Annotated[Optional[Path], typer.Option(help="output directory (default: <run>/ablations)")] = None,
           device: Device = None) -> None:
    """The paper's Table 3: GenRecEdit vs w/o position-wise / classifier (random, worst) / one-one triggering."""
    from genrecedit.runs.ablate import ablate as run_ablate, format_ablations
    from genrecedit.runs.backbone import load_run

    extra = [*(overrides or []), *([f"device={device}"] if device else [])]
    try:
        result = run_ablate(load_run(run_dir, extra), out or run_dir / "ablations",
                            [int(x) for x in seeds.split(",")])
    except GenRecEditError as err:
        _fail(err)
    typer.echo(format_ablations(result))


@app.command()
def baselines(run_dir: RunDir, baseline: Annotated[list[str], typer.Option("--baseline", "-b",
                                                                        help="sasrec, bert4rec, vqrec, specgr")],
              overrides: Overrides = None,
              param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="baseline key=value")] = None,
              reference: Annotated[bool, typer.Option(help="also score TIGER, MostPop, RecentPop")] = False,
              out: Annotated[Optional[Path], typer.Option(help="folder for <baseline>/ (default <run>/baselines)")]
              = None, device: Device = None) -> None:
    """Fit comparison baselines (paper Table 1) on a trained run's data and score them on its evaluation cases."""
    from genrecedit.baselines.runner import parse_params, reference_results, run_baseline
    from genrecedit.evaluation.report import format_table
    from genrecedit.runs.backbone import load_run
    from genrecedit.atomic import write_json

    try:
        run = load_run(run_dir, [*(overrides or []), *([f"device={device}"] if device else [])])
        out_root = out or run_dir / "baselines"
        params = parse_params(param or [])
        rows = {name: run_baseline(run, name, params, out_root / name) for name in baseline}
        summaries = {name: res.summary for name, res in rows.items()}
        if reference:
            summaries.update(reference_results(run))
            write_json(out_root / "reference.json", summaries)
    except GenRecEditError as err:
        _fail(err)
    typer.echo(format_table(summaries))
    for name, res in rows.items():
        typer.echo(f"{name}: fit {res.fit_seconds:.0f}s{' (reused)' if res.reused else ''}, recommend "
                   f"{res.recommend_seconds:.0f}s, best valid NDCG@10 {res.best_valid_ndcg10:.4f}")


@app.command()
def demo(config: ConfigArg = "demo", overrides: Overrides = None, run_dir: RunDir = Path("runs/demo"),
         upper_bound: Annotated[bool, typer.Option(
             "--upper-bound/--no-upper-bound", help="also edit with the held-out items' true test histories and "
                                                    "score that Upper Bound row (an analysis that reads test; about "
                                                    "a minute more)")] = False,
         device: Device = None) -> None:
    """ML-100k end to end: train a small TIGER, inject the held-out items, print before/after metrics."""
    from genrecedit.runs.demo import run_demo

    try:
        run_demo(_config(config, overrides, device), run_dir, echo=typer.echo, upper_bound=upper_bound)
    except GenRecEditError as err:
        _fail(err)


@app.command()
def serve(model: Annotated[Path, typer.Option("--model", "-m", help="trained run directory")],
          host: Annotated[str, typer.Option(help="bind address (loopback by default)")] = "127.0.0.1",
          port: int = 8000,
          state_dir: Annotated[Optional[Path], typer.Option(help="registry + edits (default: <model>/service)")] = None,
          api_key_file: Annotated[Optional[Path], typer.Option(
              help="file holding the API key that POST /items and DELETE /edits require in X-API-Key "
                   "(default: $GENRECEDIT_API_KEY)")] = None,
          insecure_no_auth: Annotated[bool, typer.Option(
              "--insecure-no-auth", help="with no API key, leave the mutating endpoints open (local development "
                                         "only)")] = False,
          registry_url: Annotated[Optional[str], typer.Option(
              envvar="GENRECEDIT_REGISTRY_URL", show_default=False,
              help="PostgreSQL registry (postgresql://user@host/db); default: SQLite in the state dir")] = None,
          replicas: Annotated[int, typer.Option(
              min=1, help="> 1: serve on Ray Serve as this many replicas behind one proxy, one Editor applying the "
                          "edits (needs the replicas extra: pip install -e '.[replicas]')")] = 1,
          ray_address: Annotated[Optional[str], typer.Option(
              help="join this Ray cluster (e.g. auto) instead of starting a local one; implies Ray Serve")] = None,
          exposure_cap: Annotated[Optional[float], typer.Option(
              min=0.0, max=1.0, show_default=False,
              help="the share of served top-10 lists any one new item may enter, whatever placed it there (0: "
                   "uncapped); default: the adopted insertion's cap, else 0.05")] = None,
          text_edits: Annotated[Optional[bool], typer.Option(
              "--text-edits/--no-text-edits", show_default=False,
              help="fire added items' text edits when decoding; default: not where the run adopts an insertion "
                   "(it serves them), else yes")] = None,
          overrides: Overrides = None, device: Device = None) -> None:
    """Serve recommendations over HTTP; new items (POST /items) are learnt with GenRecEdit while serving. Adding and
    rolling back need an API key: GENRECEDIT_API_KEY=<secret> genrecedit serve --model runs/demo."""
    from genrecedit.serving import serve as run_server

    overrides = list(overrides or []) + ([f"device={device}"] if device else [])
    try:
        if replicas > 1 or ray_address:
            try:
                from genrecedit.serving.replicas import serve_replicas
            except ImportError as err:
                _fail(ConfigError(f"--replicas needs Ray Serve ({err}): pip install -e '.[replicas]'"))
            from genrecedit.serving import ServiceConfig

            cfg = ServiceConfig(state_dir=state_dir.resolve() if state_dir else None,
                                api_key_file=api_key_file.resolve() if api_key_file else None,
                                insecure_no_auth=insecure_no_auth, registry_url=registry_url,
                                exposure_cap=exposure_cap, text_edits=text_edits)
            serve_replicas(model.resolve(), cfg, replicas, host, port, overrides, ray_address)
            return
        run_server(model, host, port, state_dir.resolve() if state_dir else None, overrides,
                   api_key_file=api_key_file.resolve() if api_key_file else None, insecure_no_auth=insecure_no_auth,
                   registry_url=registry_url, exposure_cap=exposure_cap, text_edits=text_edits)
    except GenRecEditError as err:
        _fail(err)


@app.command()
def grid(config: Annotated[str, typer.Argument(help="grid YAML or bundled name (mmgrid-ml100k, mmgrid-cross)")],
         run_dir: RunDir = Path("runs/mmgrid"),
         overrides: Annotated[Optional[list[str]], typer.Option(
             "--set", "-o", help="grid override (eval_max_cases=200) or run.<key>=value for the cells")] = None,
         report_only: Annotated[bool, typer.Option(help="only rewrite report.md from results.json")] = False) -> None:
    """MMGRid: train a grid of checkpoints over time periods or domains, merge them, write report.md + PNGs."""
    from genrecedit.merging.grid import run_grid
    from genrecedit.merging.grid_config import load_grid_config
    from genrecedit.merging.report import write_report

    try:
        if not report_only:
            run_grid(load_grid_config(config, list(overrides or [])), run_dir, echo=typer.echo)
        path = write_report(run_dir)
    except GenRecEditError as err:
        _fail(err)
    typer.echo(f"report: {path}")


@app.command()
def experiment(config: Annotated[str, typer.Argument(help="experiment YAML or bundled name (experiment-demo, …)")],
               out: Annotated[Optional[Path], typer.Option(
                   "--out", help="output directory (default: runs/experiments/<config name>)")] = None,
               overrides: Annotated[Optional[list[str]], typer.Option(
                   "--set", "-o", help="experiment key (max_cases=500) or run-config override (threads=1)")] = None
               ) -> None:
    """The paper's tables and figures on one run: baselines, sources, ablations, sweeps (cached, resumable)."""
    from genrecedit.experiments.runner import run_experiment
    from genrecedit.experiments.spec import load_experiment
    from genrecedit.experiments.tables import table1

    try:
        cfg = load_experiment(config, list(overrides or []))
        out_dir = out or Path("runs/experiments") / Path(config).stem
        result = run_experiment(cfg, out_dir)
    except GenRecEditError as err:
        _fail(err)
    if "TIGER" in result["rows"]:
        typer.echo(table1(result))
    typer.echo(f"report: {out_dir / 'report.md'}")


def main() -> None:  # pragma: no cover
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
