"""What a run's exchange is doing, and why: ``diagnose(run)`` for any run (trained, observed or imported; finished
or still running).

The numbers
-----------
- **portion**: per logged step, layer and branch, the portion of the *penalised* gammas with ``|gamma| <
  threshold``, and of the unpenalised ones as the control.
- **crossings**: each penalised channel's first logged step under the threshold, against the step the penalty's
  schedule alone predicts (``schedule_steps``): with SGD and momentum ``mu``, a penalised gamma's velocity from
  the subgradient ``lam * sign(gamma)`` builds up as ``lam * (1 - mu^k) / (1 - mu)``, so after ``t`` steps it
  has moved ``lr * lam / (1 - mu) * (t - mu * (1 - mu^t) / (1 - mu))``; the proximal rule shrinks it by
  ``lr * lam`` a step; Adam moves it by ``lr`` a step whatever lam (its moments of a constant gradient are
  exact); a learning-rate schedule is followed step by step. A run without a config records no optimiser:
  nothing is predicted for it, and the diagnosis says so.
- **importance** (runs with ``log.grads``): at each logged step, a channel's percentile of the data loss's
  ``|dL/dgamma|`` among the penalised channels of its layer still above the threshold, averaged over the steps
  before it crossed (ranking within a step removes the common trend: gradients shrink as the loss falls). Then
  the Spearman correlation of the crossing step with it, channels that never crossed ranked last (tied), with a
  95% interval (Fisher's z with the Bonett-Wright standard error): importance-driven exchange crosses the
  useful channels late or never.
- **one-sidedness**: the final portion under the threshold per branch.
- **thresholds**: the final portion under each threshold of a grid (``thresholds=``): the threshold acts on the
  logged gammas, so this needs no retraining.

The states (``Diagnosis.state``, the first that holds; ``flags`` lists every one that holds)
-----------------------------------------------------------------------------------------
``too early to tell``
    fewer than ``MIN_STEPS`` logged steps after the first, or no channel has crossed and none is on its way.
``not sparsifying``
    the penalised gammas are not smaller than the unpenalised ones at the last step (one-sided Mann-Whitney U
    test, p >= 0.05) and no more of them are under the threshold; or the run is finished (status complete) and
    fewer than ``NO_EXCHANGE`` (1%) of its penalised gammas are under the threshold: it exchanges nothing,
    however much its penalised gammas shrank.
``collapsing``
    90% or more of the penalised gammas are under the threshold, overall or in any one branch (a branch that has
    exchanged nearly every penalised channel has collapsed, whatever the total), or heading there: the portion's
    trend over the last third of the run reaches 0.9 within the run's length again ("by step ..."; a trend that
    would take more than ten times the logged span is reported as such, not as a step).
``importance-driven``
    the lower bound of the importance correlation is >= 0.3.
``schedule-driven``
    the crossings cluster where the schedule puts them (median |crossing - predicted| <= 20% of the predicted
    span) and importance explains little (its lower bound < 0.3, or no gradients logged).
``settling``
    a partial exchange whose portion has stayed within 0.01 (or within one channel, where one channel is more:
    fewer than 100 penalised channels) since its plateau step, for at least the last tenth of the run, after it
    moved: a portion flat since the first logged step has not been seen to settle (a run observed for a few
    steps, or from a checkpoint already exchanged), and is left to the other states.
``one-sided`` (a flag beside the state)
    one branch has at least 10% of its penalised gammas under the threshold and another at most a quarter of
    that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import RunFormatError
from ..runs.reader import Run, load_run
from .learning_curves import plateau_step
from .training import lr_rates

__all__ = ["MIN_STEPS", "NO_EXCHANGE", "STATES", "Diagnosis", "diagnose", "schedule_steps", "compare_diagnoses", "diagnose_runs"]

MIN_STEPS = 5  # logged steps a diagnosis needs
NO_EXCHANGE = 0.01  # a finished run with fewer of its penalised gammas under the threshold is not sparsifying
STATES = ("too early to tell", "not sparsifying", "collapsing", "importance-driven", "schedule-driven", "settling",
          "one-sided")


def schedule_steps(gamma0: np.ndarray, threshold: float, lr: float | np.ndarray, lam: float, momentum: float = 0.0,
                   rule: str = "subgradient", max_steps: int = 10_000_000, optimizer: str = "sgd",
                   eps: float = 1e-8) -> np.ndarray:
    """Steps the L1 penalty alone needs to bring ``|gamma0|`` under ``threshold`` (0 where it is already under;
    -1 beyond ``max_steps`` or where ``lam`` is 0).

    ``rule="subgradient"``: SGD with heavy-ball momentum ``momentum`` on the gradient ``lam * sign(gamma)``
    (PyTorch's: ``buf = momentum * buf + grad``, ``gamma -= lr * buf``); ``"proximal"``: ``lr * lam`` a step.
    ``lr`` is one rate, or the rate of every step (a schedule, e.g. ``lr_at`` over the run); with a schedule,
    a channel that has not crossed by its last step gets -1.

    ``optimizer="adam"`` (subgradient rule): Adam's bias-corrected moments of a constant gradient
    ``lam * sign(gamma)`` are exactly ``lam`` and ``lam**2``, so every step moves gamma by ``lr * lam / (lam +
    eps)``, whatever lam: the penalty alone brings every gamma from 1 to the threshold at one step, and a gamma
    that crosses much later is held by its data gradient. (The proximal rule shrinks by ``lr * lam`` under
    either optimiser.)
    """
    if optimizer == "adam" and rule == "subgradient":  # lr * lam / (lam + eps) a step: as SGD without momentum
        return schedule_steps(gamma0, threshold, lr, lam / (lam + eps) if lam > 0 else 0.0, 0.0, rule, max_steps)
    g0 = np.abs(np.asarray(gamma0, dtype=np.float64))
    out = np.zeros(g0.shape, dtype=np.int64)
    need = g0 - threshold  # the distance to cover: strictly more than this
    todo = need >= 0
    if np.ndim(lr):
        rates = np.asarray(lr, dtype=np.float64)
        mu = 0.0 if rule == "proximal" else momentum
        velocity = lam * (1 - mu ** np.arange(1, len(rates) + 1)) / (1 - mu) if mu else np.full(len(rates), lam)
        moved = np.cumsum(rates * velocity)  # moved[i]: the distance covered after step i + 1
        first = np.searchsorted(moved, need[todo], side="right")  # the first i with moved[i] > need
        out[todo] = np.where((first < len(rates)) & (lam > 0), first + 1, -1)
        return out
    if lam <= 0 or lr <= 0:
        out[todo] = -1
        return out
    if rule == "proximal" or momentum == 0:
        steps = np.floor(need[todo] / (lr * lam)).astype(np.int64) + 1
    else:
        mu = momentum

        def moved(t: np.ndarray) -> np.ndarray:
            return lr * lam / (1 - mu) * (t - mu * (1 - mu ** t) / (1 - mu))

        lo = np.zeros(int(todo.sum()), dtype=np.int64)
        hi = np.full(lo.shape, max_steps, dtype=np.int64)
        target = need[todo]
        while (hi - lo > 1).any():  # the first t with moved(t) > need: moved is increasing in t
            mid = (lo + hi) // 2
            over = moved(mid.astype(np.float64)) > target
            hi = np.where(over, mid, hi)
            lo = np.where(over, lo, mid)
        steps = hi
    steps = np.where(steps >= max_steps, -1, steps)
    out[todo] = steps
    return out


@dataclass
class Diagnosis:
    """``diagnose``'s answer: the state, the numbers behind it, and the frames the figure draws."""

    run: str
    state: str
    flags: list[str]
    table: pd.DataFrame  # measure, value, interval, rule: the numbers behind the state
    portion: pd.DataFrame  # step, layer, branch, branch_name, penalised, below, n
    crossings: pd.DataFrame  # layer, branch, channel, gamma0, crossing_step, predicted_step, importance
    thresholds: pd.DataFrame  # threshold, penalised_below, unpenalised_below (at the last step)
    regime: str
    notes: list[str] = field(default_factory=list)
    numbers: dict[str, float] = field(default_factory=dict)  # the table's numbers unformatted: final, final_free,
    #                                                          p_mannwhitney, cluster, rho, rho_low, rho_high, plateau
    forecast: dict | None = None  # a run in progress: its latest forecast (the forecasts table's row), else None

    def __str__(self) -> str:
        flags = [f for f in self.flags if f != self.state]
        head = f"{self.run}: {self.state}" + (f" ({', '.join(flags)})" if flags else "")
        return "\n".join([head, f"regime: {self.regime}", *[f"note: {n}" for n in self.notes],
                          self.table.to_string(index=False)])


def _steps_matrix(gammas: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """``(steps [S], rows of one step [R], gamma [S, R])``: the gammas table as one matrix (every logged step has
    the same rows, in the observer's order)."""
    steps, counts = np.unique(gammas["step"].to_numpy(), return_counts=True)
    if (counts != counts[0]).any():
        raise RunFormatError("the gammas table has steps with different rows; it cannot be diagnosed")
    order = np.argsort(gammas["step"].to_numpy(), kind="stable")
    g = gammas["gamma"].to_numpy()[order].reshape(len(steps), counts[0])
    rows = gammas.iloc[order[:counts[0]]][["layer", "branch", "channel", "penalised"]].reset_index(drop=True)
    return steps, rows, g


def _spearman_ci(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    if len(x) < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan"), float("nan")
    rho = float(stats.spearmanr(x, y).statistic)
    z, se = math.atanh(max(min(rho, 0.999999), -0.999999)), math.sqrt((1 + rho ** 2 / 2) / (len(x) - 3))
    q = stats.norm.ppf(0.5 + level / 2)
    return rho, math.tanh(z - q * se), math.tanh(z + q * se)


def diagnose(run: Run | str | Path, threshold: float | None = None,
             thresholds: Sequence[float] | None = None) -> Diagnosis:
    """Diagnose the exchange of ``run`` (a ``Run`` or its directory); see the module docstring for the rules.

    Raises ``ValueError`` for a run with no penalised gamma, no threshold (give ``threshold=``), a negative
    threshold, or fewer than ``MIN_STEPS`` logged steps; ``RunFormatError`` (from ``load_run``) for a run
    directory of a schema this cen_lab does not read.
    """
    run = run if isinstance(run, Run) else load_run(run)
    thr = run.manifest.get("threshold") if threshold is None else threshold
    if thr is None:
        raise ValueError(f"{run.path}: the run records no exchange threshold; give one: diagnose(run, threshold=...)")
    grid = sorted({float(thr), *(thresholds if thresholds is not None else (thr / 4, thr / 2, thr * 2, thr * 4))})
    if min(grid) < 0:
        raise ValueError(f"thresholds must be >= 0, got {[t for t in grid if t < 0]}")
    unapplied = sorted(run.manifest.get("unapplied_layers") or {})  # norms the forward never ran: no exchange
    gammas = run.gammas[~run.gammas["layer"].isin(unapplied)] if unapplied else run.gammas
    if gammas.empty or not gammas["penalised"].any():
        raise ValueError(f"{run.path}: no penalised gammas (the gammas table's penalised column is all False); "
                         "nothing is attracted to 0, so there is nothing to diagnose")
    steps, rows, g = _steps_matrix(gammas)
    if len(steps) < MIN_STEPS + 1:
        raise ValueError(f"{run.path}: {len(steps)} logged steps; a diagnosis needs at least {MIN_STEPS + 1} "
                         f"(log more often, or wait for the run to log more)")
    below = np.abs(g) < np.float32(thr)  # [S, R], as the exchange compares
    pen = rows["penalised"].to_numpy()
    below_pen = below[:, pen]  # [S, R_pen]: one copy, used for the totals and the crossings

    def name(b: int) -> str:
        return run.branches[b] if b < len(run.branches) else str(b)

    # portion under the threshold per step, layer, branch, penalised or not: one matrix product
    keys = rows[["layer", "branch", "penalised"]].drop_duplicates().reset_index(drop=True)
    group = rows.merge(keys.reset_index(), on=["layer", "branch", "penalised"], how="left")["index"].to_numpy()
    onehot = np.zeros((len(rows), len(keys)), dtype=np.float32)
    onehot[np.arange(len(rows)), group] = 1.0
    n = onehot.sum(0)
    share = (below.astype(np.float32) @ onehot) / n  # [S, K]
    portion = pd.DataFrame({"step": np.repeat(steps, len(keys)),
                            "layer": np.tile(keys["layer"].to_numpy(), len(steps)),
                            "branch": np.tile(keys["branch"].to_numpy(), len(steps)),
                            "penalised": np.tile(keys["penalised"].to_numpy(), len(steps)),
                            "below": share.ravel(), "n": np.tile(n.astype(np.int64), len(steps))})
    portion["branch_name"] = [name(b) for b in portion["branch"]]
    total_pen = below_pen.mean(1)  # [S] all layers and branches
    total_free = below[:, ~pen].mean(1) if (~pen).any() else np.zeros(len(steps))

    # crossings and their predicted steps
    crossed = below_pen.any(0)
    first = np.where(crossed, below_pen.argmax(0), -1)
    crossings = rows[pen][["layer", "branch", "channel"]].reset_index(drop=True)
    crossings["gamma0"] = g[0, pen]
    crossings["crossing_step"] = pd.array(np.where(crossed, steps[np.maximum(first, 0)], -1), dtype="Int64")
    crossings.loc[~crossed, "crossing_step"] = pd.NA
    notes: list[str] = []
    if unapplied:
        notes.append(f"layers {unapplied} are left out: the model's forward never applied their norms "
                     "(manifest['unapplied_layers']), so only the penalty moved their gammas")
    cfg = run.config
    predicted = None
    if cfg is None:
        notes.append(f"{_article(run.source)} {run.source} run records no optimiser: the schedule's crossing steps "
                     "are not predicted")
    else:
        lr = cfg.train.lr
        if cfg.train.lr_schedule != "constant":
            lr = lr_rates(cfg.train, int(steps[0]))
        t = schedule_steps(g[0, pen], thr, lr, run.lam_per_step or 0.0,
                           cfg.train.momentum if cfg.train.l1_rule == "subgradient" else 0.0, cfg.train.l1_rule,
                           optimizer=cfg.train.optimizer)
        predicted = np.where(t >= 0, steps[0] + t, -1)
        crossings["predicted_step"] = pd.array(np.where(t >= 0, predicted, 0), dtype="Int64")
        crossings.loc[t < 0, "predicted_step"] = pd.NA
    if "predicted_step" not in crossings:
        crossings["predicted_step"] = pd.array([pd.NA] * len(crossings), dtype="Int64")

    # importance: each channel's percentile of |dL/dgamma| among the penalised channels of its layer still above
    # the threshold, averaged over its logged steps before it crossed; channels that never crossed rank last
    rho = lo = hi = float("nan")
    crossings["importance"] = np.nan
    if not run.grads.empty:
        crossings["importance"] = _importance(run.grads, crossings)
        c = crossings.dropna(subset=["importance"])
        order = c["crossing_step"].astype("float64").fillna(float(steps[-1]) + 1).to_numpy()  # censored: last
        rho, lo, hi = _spearman_ci(order, c["importance"].to_numpy())
    else:
        notes.append("no gradients logged (log.grads / obs.grads): importance is not measured")

    # the rules
    last_pen = np.abs(g[-1, pen])
    last_free = np.abs(g[-1, ~pen]) if (~pen).any() else np.array([])
    p_mw = float(stats.mannwhitneyu(last_pen, last_free, alternative="less").pvalue) if len(last_free) else float("nan")
    final, final_free = float(total_pen[-1]), float(total_free[-1])
    tail = slice(len(steps) * 2 // 3, None)
    slope = np.polyfit(steps[tail], total_pen[tail], 1)[0] if len(steps[tail]) >= 2 else 0.0
    reach = steps[-1] + (0.9 - final) / slope if slope > 0 and final < 0.9 else None
    span = steps[-1] - steps[0]
    far = reach is not None and reach > steps[-1] + 10 * span  # a step number there would be noise, not a forecast
    plateau = plateau_step(steps, total_pen, max(0.01, 1.5 / int(pen.sum())))  # 0.01, or one channel if more
    settled = plateau is not None and plateau > steps[0] and steps[-1] - plateau >= 0.1 * span
    per_branch = {name(b): float(below[-1, pen & (rows["branch"].to_numpy() == b)].mean())
                  for b in sorted(rows.loc[pen, "branch"].unique())}
    cluster = float("nan")
    if predicted is not None and crossed.any():
        ok = crossed & (predicted >= 0)
        if ok.any():
            err = np.abs(steps[first[ok]] - predicted[ok])
            cluster = float(np.median(err / np.maximum(predicted[ok] - steps[0], 1)))

    flags = []
    if (final <= final_free + 0.02 and not (p_mw < 0.05)) or (run.status == "complete" and final < NO_EXCHANGE):
        flags.append("not sparsifying")
    worst = max(per_branch.values()) if per_branch else 0.0
    if final >= 0.9 or worst >= 0.9 or (reach is not None and reach <= steps[-1] + span):
        flags.append("collapsing")
    if worst >= 0.9 > final:
        collapsed = [k for k, v in per_branch.items() if v >= 0.9]
        notes.append(f"branch {', '.join(collapsed)} has {worst:.0%} of its penalised gammas under the threshold: it "
                     f"has collapsed, although {final:.0%} are overall")
    if lo >= 0.3:
        flags.append("importance-driven")
    if cluster <= 0.2 and not lo >= 0.3:
        flags.append("schedule-driven")
    if settled and 0 < final < 0.9:
        flags.append("settling")
    if len(per_branch) > 1 and worst >= 0.1 and min(per_branch.values()) <= worst / 4:
        flags.append("one-sided")
    order = ["not sparsifying", "collapsing", "importance-driven", "schedule-driven", "settling"]
    state = next((s for s in order if s in flags), "too early to tell")
    if state == "too early to tell":
        flags.insert(0, state)

    def row(measure, value, interval="", rule=""):
        return {"measure": measure, "value": value, "interval": interval, "rule": rule}

    table = pd.DataFrame([
        row("penalised under the threshold, last step", f"{final:.3f}", "",
            "collapsing: >= 0.9 (overall or in one branch) or heading there"),
        row("unpenalised under the threshold (control)", f"{final_free:.3f}"),
        row("penalised < unpenalised |gamma| (Mann-Whitney p)", f"{p_mw:.3g}", "",
            f"not sparsifying: p >= 0.05, or finished with < {NO_EXCHANGE:g} under the threshold"),
        row("trend reaches 0.9 by step", "" if reach is None else
            (f"beyond 10x the logged span ({span} steps)" if far else f"{reach:.0f}")),
        row("crossing vs schedule, median |error| / span", f"{cluster:.3f}", "", "schedule-driven: <= 0.2"),
        row("Spearman(crossing step, importance)", f"{rho:.3f}", f"{lo:.3f} to {hi:.3f}",
            "importance-driven: lower bound >= 0.3"),
        row("plateau step", "" if plateau is None else str(plateau), "", "settling: flat for >= 10% of the run"),
        row("under the threshold per branch", ", ".join(f"{k} {v:.3f}" for k, v in per_branch.items()), "",
            "one-sided: one >= 0.1, another <= a quarter of it"),
    ])
    free = ~pen
    thresholds_df = pd.DataFrame({"threshold": grid,
                                  "penalised_below": [float((np.abs(g[-1, pen]) < np.float32(t)).mean()) for t in grid],
                                  "unpenalised_below": [float((np.abs(g[-1, free]) < np.float32(t)).mean())
                                                        if free.any() else float("nan") for t in grid]})
    numbers = {"final": final, "final_free": final_free, "p_mannwhitney": p_mw, "cluster": cluster, "rho": rho,
               "rho_low": lo, "rho_high": hi, "plateau": float("nan") if plateau is None else float(plateau)}
    fc = _latest_forecast(run, steps, rows, g, float(thr))
    if fc is not None:
        at = "" if fc["step_90"] < 0 else f"; 90% at step {fc['step_90']}"
        notes.append(f"the run is in progress: forecast at step {fc['step']} of {fc['budget']}, {fc['predicted']:.1%} "
                     f"under the threshold at the end (interval {fc['low']:.1%}-{fc['high']:.1%}), {fc['state']}{at} "
                     "(cen_lab.forecast; its accuracy: README, 'Forecasting a run')")
    return Diagnosis(run.path.name, state, flags, table, portion, crossings, thresholds_df, _regime(run, len(steps)),
                     notes, numbers, fc)


def _latest_forecast(run: Run, steps: np.ndarray, rows: pd.DataFrame, g: np.ndarray, thr: float) -> dict | None:
    """An incomplete run's forecast: made now from its config's schedule (a trained run), else the latest one it
    recorded (an observed run given its schedule); None for a finished run or when there is none."""
    from ..runs.forecast_model import MIN_LOGS, forecast_arrays
    from .training import lr_rates

    if run.complete:
        return None
    pen = rows["penalised"].to_numpy()
    if run.config is not None and len(steps) >= MIN_LOGS and run.lam_per_step and steps[-1] <= run.config.train.steps:
        u = np.concatenate([[0.0], np.cumsum(lr_rates(run.config.train))])
        r = forecast_arrays(steps, np.abs(g[:, pen]), u, thr, pd.factorize(rows.loc[pen, "layer"])[0])
        return {k: getattr(r, k) for k in ("step", "budget", "now", "predicted", "low", "high", "state", "step_90")}
    if run.forecasts.empty:
        return None
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in run.forecasts.iloc[-1].to_dict().items()}


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def diagnose_runs(runs: dict[str, Run], threshold: float | None = None) -> dict[str, Diagnosis]:
    """``diagnose`` every run of a dict label -> Run (or run directory), keeping the labels."""
    return {label: diagnose(run, threshold) for label, run in runs.items()}


def compare_diagnoses(diagnoses: dict[str, Diagnosis]) -> pd.DataFrame:
    """The diagnosis tables of several runs side by side: one row per measure (the state and the regime first),
    one column per label of ``diagnoses`` (value, with its interval in brackets where it has one), then the rule."""
    labels = list(diagnoses)
    if not labels:
        raise ValueError("compare_diagnoses needs at least one diagnosis")
    first = diagnoses[labels[0]].table
    out = pd.DataFrame({"measure": ["state", "regime", *first["measure"]]})
    for label, d in diagnoses.items():
        cells = [f"{v} ({i})" if i else v for v, i in zip(d.table["value"], d.table["interval"])]
        state = d.state + "".join(f", {f}" for f in d.flags if f != d.state)
        out[label] = [state, d.regime, *cells]
    out["rule"] = ["first of the flags that hold (see cen_lab.experiments.diagnosis)", "", *first["rule"]]
    return out


def _importance(grads: pd.DataFrame, crossings: pd.DataFrame) -> np.ndarray:
    """Per row of ``crossings``: the mean, over the channel's logged steps before it crossed, of its percentile of
    ``|dL/dgamma|`` among the penalised channels of its layer not yet crossed at that step (NaN without gradients).

    Ranking within each step removes the common trend (the data gradient shrinks as the loss falls): a raw mean
    would make a channel that crossed early look important only because it was measured early.
    """
    keys = ["layer", "branch", "channel"]
    g = grads[["step", *keys, "dgamma"]].merge(crossings[[*keys, "crossing_step"]], on=keys, how="inner")
    until = g["crossing_step"].astype("float64").fillna(np.inf).to_numpy()  # never crossed: every step
    g = g[g["step"].to_numpy() < until]
    pct = g.assign(a=g["dgamma"].abs()).groupby(["step", "layer"])["a"].rank(pct=True)
    imp = pct.groupby([g[k] for k in keys]).mean()
    return crossings.set_index(keys).index.map(imp).to_numpy(float)


def _regime(run: Run, logged: int) -> str:
    from .regime import SMOKE_TEST, architecture, is_smoke_test, optimiser

    m = run.manifest
    if run.config is None:
        return (f"{run.source} run, {m.get('model_class')}; {logged} logged steps, to step {m.get('last_step')}; "
                f"lam per step {run.lam_per_step}; threshold {run.threshold}")
    cfg = run.config
    evidence = SMOKE_TEST if is_smoke_test(cfg) else "one run"
    return (f"{architecture(cfg)}; {cfg.train.steps} steps; lam {cfg.train.lam} (per step {run.lam_per_step}); "
            f"{optimiser(cfg)}; L1 {cfg.train.l1_rule}; gamma init {cfg.model.gamma_init} (evidence: {evidence})")
