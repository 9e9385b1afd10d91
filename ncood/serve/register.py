"""`ncood register`: register the median-seed `ood_scorer` of an experiment's best condition and alias it.

    ncood register --experiment ablation-default [--metric auroc/gmm/photos] [--alias champion]

1. Candidates: the experiment's trial runs (tag ncood.role = trial) that FINISHED and were not stopped early,
   each with the metric's value at its final epoch (step = its `epochs` param). A (condition, seed) seen in
   several runs (a re-run sweep) counts once: the newest run.
2. The best condition: highest mean of the metric over its runs (lowest for fpr95, loss/*, nc/*, time/*; or
   --mode). Ties go to the condition with more runs, then to the name.
3. Its median seed: runs sorted by the metric (ties by seed); the one at index (n - 1) // 2, i.e. the median for
   an odd count and the lower of the two middle values for an even count. Not the best seed: a champion that is
   typical of its condition, not a lucky draw (the papers report 15 seeds for that reason, docs/method.md#seeds).
4. Its logged model `ood_scorer` becomes a new version of the registered model `ncood-ood-scorer` (tagged with the
   reason) and gets the alias, which `mlflow models serve -m models:/ncood-ood-scorer@champion` then serves. A
   model registered before keeps its version: the alias moves to it and its reason tags are this choice's.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ncood import keys, runs_query, tracking
from ncood.run_fields import process_tracking_uri
from ncood.serve.cli import DEFAULT_ALIAS, DEFAULT_MODEL_URI, DEFAULT_PORT, MODEL_NAME  # noqa: F401  (re-exported)
from ncood.serve.guard import PROTOCOL

_LOWER_IS_BETTER = ("fpr95",)  # the detection metric of an OoD key (ncood.keys.parse_ood_key)
_LOWER_IS_BETTER_PREFIX = ("loss/", "nc/", "time/")


class RegisterError(RuntimeError):
    """Nothing can be registered as asked; the message says why and what to do."""


class ModelNotYours(RegisterError):
    """The tracking server refused to write the registered model: another user's (READ for everyone else)."""


@dataclass(frozen=True)
class Candidate:
    run_id: str
    run_name: str
    condition: str
    seed: int
    value: float  # the metric at the run's final epoch
    start_time: int = 0


@dataclass(frozen=True)
class ConditionStats:
    condition: str
    mean: float
    sd: float  # sample standard deviation (0 for one run)
    runs: tuple[Candidate, ...]  # sorted by (value, seed)


@dataclass(frozen=True)
class Choice:
    metric: str
    mode: str  # "max" | "min"
    ranking: tuple[ConditionStats, ...]  # best first
    run: Candidate  # the median seed of ranking[0]
    rank: int  # 1-based position of run in ranking[0].runs (ascending by value)


@dataclass(frozen=True)
class Registration:
    choice: Choice
    experiment: str
    tracking_uri: str
    model_name: str
    version: str
    alias: str
    model_id: str
    notes: tuple[str, ...] = ()


def metric_mode(metric: str) -> str:
    """'min' for metrics where lower is better (fpr95, losses, NC metrics, times), else 'max'."""
    parsed = keys.parse_ood_key(metric)
    if (parsed and parsed[2] in _LOWER_IS_BETTER) or metric.startswith(_LOWER_IS_BETTER_PREFIX):
        return "min"
    return "max"


def median_run(runs: Sequence[Candidate]) -> tuple[Candidate, int]:
    """(the run at index (n - 1) // 2 of runs sorted by (value, seed), its 1-based rank)."""
    ordered = sorted(runs, key=lambda c: (c.value, c.seed))
    i = (len(ordered) - 1) // 2
    return ordered[i], i + 1


def choose(candidates: Sequence[Candidate], metric: str, mode: str | None = None) -> Choice:
    """Best condition by mean metric, then its median-seed run (pure: no MLflow)."""
    if not candidates:
        raise RegisterError(f"no finished trial run has {metric!r} at its final epoch")
    mode = mode or metric_mode(metric)
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    groups: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        groups[c.condition].append(c)
    stats = []
    for cond, runs in groups.items():
        values = [r.value for r in runs]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        stats.append(ConditionStats(cond, statistics.fmean(values), sd,
                                    tuple(sorted(runs, key=lambda c: (c.value, c.seed)))))
    sign = -1.0 if mode == "max" else 1.0
    stats.sort(key=lambda s: (sign * s.mean, -len(s.runs), s.condition))
    run, rank = median_run(stats[0].runs)
    return Choice(metric, mode, tuple(stats), run, rank)


# ---- MLflow side -------------------------------------------------------------------------------------------
def default_metric(runs: Sequence) -> str:
    """auroc/gmm/<first OoD set of the experiment's trials>."""
    for run in runs:
        sets = [s for s in run.data.params.get("ood_sets", "").split(",") if s]
        if sets:
            return keys.ood_key(sets[0], "gmm", "auroc")
    raise RegisterError("the trial runs have no `ood_sets` param: pass --metric auroc/gmm/<set>")


def collect_candidates(client: MlflowClient, runs: Sequence, metric: str) -> tuple[list[Candidate], list[str]]:
    """Candidates (metric at each run's final epoch; newest run per condition and seed) and notes on the rest."""
    notes, seen, out = [], set(), []
    skipped: dict[str, list[str]] = defaultdict(list)
    for run in runs:  # newest first
        tags, params, name = run.data.tags, run.data.params, run.info.run_name
        if runs_query.stopped_early(run):
            skipped["stopped early"].append(name)
            continue
        stored = next((k for k in run.data.metrics if keys.canonical_key(k) == metric), None)  # older layout too
        if stored is None:
            skipped[f"no {metric}"].append(name)
            continue
        condition, seed, epochs = tags.get(keys.TAG_CONDITION), tags.get(keys.TAG_SEED), params.get("epochs")
        if condition is None or seed is None or epochs is None:
            skipped["missing condition/seed/epochs"].append(name)
            continue
        if (condition, seed) in seen:
            skipped["older duplicate of a (condition, seed)"].append(name)
            continue
        final = [m.value for m in client.get_metric_history(run.info.run_id, stored) if m.step == int(epochs)]
        if not final:
            skipped[f"no {metric} at the final epoch {epochs}"].append(name)
            continue
        seen.add((condition, seed))
        out.append(Candidate(run.info.run_id, name, condition, int(seed), float(final[-1]), run.info.start_time))
    for why, names in skipped.items():
        notes.append(f"left out {len(names)} run(s), {why}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
    return out, notes


def scorer_model_id(client: MlflowClient, run_id: str) -> str:
    """The READY `ood_scorer` LoggedModel of a run (the latest if several)."""
    run = client.get_run(run_id)
    outputs = sorted((run.outputs.model_outputs if run.outputs else []), key=lambda o: o.step)
    for out in reversed(outputs):
        model = client.get_logged_model(out.model_id)
        if model.name == keys.SCORER_NAME and str(model.status).endswith("READY"):
            return model.model_id
    raise RegisterError(f"run {run.info.run_name} ({run_id}) has no '{keys.SCORER_NAME}' model: it ran without the "
                        f"serving hook; log one with ncood.serve.log_ood_scorer or re-run the trial")


def register_best(experiment: str, *, metric: str | None = None, alias: str = DEFAULT_ALIAS,
                  tracking_uri: str | None = None, model_name: str = MODEL_NAME,
                  mode: str | None = None) -> Registration:
    """Choose (see the module docstring), register the chosen run's `ood_scorer` as a new version (unless a version
    already holds that model: registering twice adds no copy), set `alias` to it."""
    uri = tracking.existing_store(tracking_uri)
    client = MlflowClient(uri)
    try:
        exp = runs_query.experiment(client, experiment)
    except runs_query.RunsQueryError as e:
        raise RegisterError(str(e)) from None
    runs = runs_query.finished_trials(client, exp.experiment_id)
    if not runs:
        raise RegisterError(f"experiment {experiment!r} has no FINISHED trial runs")
    metric = metric or default_metric(runs)
    candidates, notes = collect_candidates(client, runs, metric)
    choice = choose(candidates, metric, mode)
    model_id = scorer_model_id(client, choice.run.run_id)
    reg = Registration(choice, experiment, uri, model_name, "", alias, model_id, tuple(notes))
    try:
        return _write(client, reg)
    except MlflowException as e:  # a shared server: the model name is taken by another user
        if not tracking.permission_denied(e):
            raise
        raise ModelNotYours(
            f"{tracking.refusal(uri, f'write the registered model {model_name!r}')}: the name belongs to another "
            f"user of the server (registered models are global, not per experiment). Register under a name of "
            f"your own: ncood register --experiment {experiment} --tracking-uri {uri} --model-name <your-model>, "
            f"then serve models:/<your-model>@{alias}; or ask the model's owner for EDIT permission") from None


def _write(client: MlflowClient, reg: Registration) -> Registration:
    """The registry writes of register_best: the registered model if new, a version (or the one holding the model,
    retagged), the alias; returns `reg` with its version (and a note when no version was added)."""
    choice, best, name = reg.choice, reg.choice.ranking[0], reg.model_name
    try:
        client.create_registered_model(name, description="ncood OoD scorer (base64 images -> OoD scores); "
                                                          "see deploy/serving/README.md")
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    reason = {"ncood.metric": choice.metric, "ncood.mode": choice.mode, "ncood.condition": best.condition,
              "ncood.condition_mean": f"{best.mean:.6g}", "ncood.n_seeds": str(len(best.runs)),
              "ncood.seed": str(choice.run.seed), "ncood.seed_value": f"{choice.run.value:.6g}",
              "ncood.experiment": reg.experiment}
    version, notes = _version_holding(client, name, reg.model_id), list(reg.notes)
    if version is None:
        with process_tracking_uri(reg.tracking_uri):  # the sqlite registry looks the LoggedModel up through the
            version = str(client.create_model_version(  # global URI
                name, source=f"models:/{reg.model_id}", run_id=choice.run.run_id, model_id=reg.model_id,
                tags=reason, description=f"median seed ({choice.run.seed}) of the best condition {best.condition} "
                                         f"by mean {choice.metric} over {len(best.runs)} seeds in experiment "
                                         f"{reg.experiment}").version)
    else:  # registering again (e.g. `ncood register` after the job registered): the alias moves, no copy is added
        for key, value in reason.items():  # the reason of this choice (metric, mode, ...), not the first one's
            client.set_model_version_tag(name, version, key, value)
        notes.append(f"{name} version {version} already holds this model: no new version")
    client.set_registered_model_alias(name, reg.alias, version)
    return dataclasses.replace(reg, version=version, notes=tuple(notes))


def _version_holding(client: MlflowClient, model_name: str, model_id: str) -> str | None:
    """The version of `model_name` registered from the LoggedModel `model_id`, if one is (the newest)."""
    held = [mv for mv in client.search_model_versions(f"name = '{model_name}'") if mv.source == f"models:/{model_id}"]
    return str(max(int(mv.version) for mv in held)) if held else None


def serve_command(reg: Registration, port: int = DEFAULT_PORT) -> str:
    """`mlflow models serve` of the registration as `ncood serve` runs it (UVICORN_HTTP: ncood's request limits in
    front of MLflow's parser, ncood.serve.guard)."""
    return (f"MLFLOW_TRACKING_URI={reg.tracking_uri} UVICORN_HTTP={PROTOCOL} {tracking.executable('mlflow')} models "
            f"serve -m models:/{reg.model_name}@{reg.alias} --env-manager local -h 127.0.0.1 -p {port}")


def ncood_serve_command(reg: Registration, port: int = DEFAULT_PORT) -> str:
    """`ncood serve` of the registration (flags at their defaults left out)."""
    uri = f"models:/{reg.model_name}@{reg.alias}"
    flags = "".join([f" --model-uri {uri}" if uri != DEFAULT_MODEL_URI else "",
                     f" --port {port}" if port != DEFAULT_PORT else ""])
    return f"{tracking.executable('ncood')} serve --tracking-uri {reg.tracking_uri}{flags}"


def format_registration(reg: Registration, port: int = DEFAULT_PORT) -> str:
    ch = reg.choice
    best = ch.ranking[0]
    better = "higher" if ch.mode == "max" else "lower"
    n_runs = sum(len(s.runs) for s in ch.ranking)
    lines = [f"experiment {reg.experiment!r}: {n_runs} finished trial runs in {len(ch.ranking)} conditions; "
             f"metric {ch.metric} at the final epoch ({better} is better)"]
    width = max(len(s.condition) for s in ch.ranking)
    lines.append(f"  {'condition':<{width}s}  {'mean':>9s}  {'sd':>9s}  {'n':>3s}")
    for i, s in enumerate(ch.ranking):
        lines.append(f"  {s.condition:<{width}s}  {s.mean:9.4f}  {s.sd:9.4f}  {len(s.runs):3d}"
                     + ("   <- best mean" if i == 0 else ""))
    n = len(best.runs)
    which = "the median" if n % 2 else "the lower of the two middle values (even count)"
    lines += [
        f"chosen run: {ch.run.run_name} (run id {ch.run.run_id})",
        f"  why: condition {best.condition} has the best mean {ch.metric} = {best.mean:.4f} over {n} seed(s); "
        f"seed {ch.run.seed} has {ch.run.value:.4f}, rank {ch.rank} of {n} ascending: {which}",
        f"registered: {reg.model_name} version {reg.version} (models:/{reg.model_id}), alias @{reg.alias}",
        *[f"note: {note}" for note in reg.notes],
        "serve it:",
        f"  {ncood_serve_command(reg, port)}",
        f"  (what it runs: {serve_command(reg, port)})",
        f"  then: curl -s http://127.0.0.1:{port}/ping  (requests: deploy/serving/README.md)",
    ]
    return "\n".join(lines)


# ---- command line: flags and run() in ncood.serve.cli (light: `ncood register --help` skips torch and MLflow) ----
def main(argv: Sequence[str] | None = None) -> int:
    from ncood.serve.cli import add_register_arguments, run_register

    parser = argparse.ArgumentParser(prog="ncood register", description=__doc__.split("\n\n")[0])
    add_register_arguments(parser)
    return run_register(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
