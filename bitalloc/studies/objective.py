"""What one trial does: build a plan, apply it with RTN, measure it on held-out text.

Sample studies let the sampler pick a format per unit / tie group (:func:`plan_params`);
sweeps solve the (budget, estimator, solver) point's plan with :func:`bitalloc.solve`. Either
way the plan is applied to a working copy of the model (restored bit-exactly afterwards) and
compared with the untouched reference on ``n_windows`` held-out windows (``corpus``, by default
the held-out Wikipedia split as ``bitalloc eval``): perplexity
and the mean per-token KL(reference || quantized) (:func:`bitalloc.data.evaluate_lm`).

Trial values: ``(avg_bits, kl)``. User attributes: ``avg_bits``, ``bytes``, ``kl``, ``ppl``,
``predicted`` (the estimator's summed table entries), ``over_budget``, ``worker``,
``eval_time_s`` and ``plan`` (the plan's JSON dict, :meth:`Solution.to_dict`).
"""

from __future__ import annotations

import copy
import math
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from ..defaults import parse_tie
from ..search.params import params_to_choice, plan_params
from .study import StudyConfig

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from ..search.solution import Solution
    from ..search.table import SensitivityTable


class Infeasible(Exception):
    """The sweep point's budget admits no plan (the trial is recorded as PRUNED)."""


class PlanObjective:
    """``objective(trial) -> (avg_bits, kl)`` for one worker process.

    Holds the reference model, a working copy, the search space, the held-out windows and the
    sensitivity tables computed so far (one per estimator, also cached on disk when
    ``cache_dir`` is given).
    """

    def __init__(
        self,
        config: StudyConfig,
        model: nn.Module,
        tok: Any,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        from ..data import windows
        from ..search.space import SearchSpace

        self.config = config
        self.model = model
        self.tok = tok
        self.cache_dir = cache_dir
        self.work = copy.deepcopy(model)
        self.windows = windows(tok, config.corpus, config.seq_len, config.n_windows)
        tie = parse_tie(config.tie)
        self.space = SearchSpace.from_model(
            model, config.formats, tie=tie, example_input=self.windows[:1]
        )
        self.params = plan_params(self.space)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._tables: dict[str, SensitivityTable] = {}
        self._calib: Any = None

    @classmethod
    def from_config(
        cls, config: StudyConfig, *, cache_dir: str | os.PathLike[str] | None = None
    ) -> PlanObjective:
        """Load ``config.model`` (offline) and build the objective."""
        from ..models import load

        model, tok = load(config.model)
        return cls(config, model, tok, cache_dir=cache_dir)

    # ------------------------------------------------------------------ pieces
    def table(self, estimator: str) -> SensitivityTable:
        """The sensitivity table of ``estimator`` (computed once per process)."""
        from ..data import calibration
        from ..search.api import estimate

        if estimator not in self._tables:
            if self._calib is None:
                self._calib = calibration(
                    self.tok, self.config.n_calib, self.config.seq_len, seed=self.config.seed
                )
            self._tables[estimator] = estimate(
                self.model, self.space, self._calib, estimator, cache_dir=self.cache_dir
            )
        return self._tables[estimator]

    def plan(self, trial: optuna.Trial) -> Solution:
        """Suggest the trial's params and turn them into a plan."""
        from ..search.api import solve
        from ..search.budget import Budget
        from ..search.solution import Solution, Status

        cfg = self.config
        if cfg.kind == "sweep":
            budget = trial.suggest_categorical("budget", list(cfg.budgets))
            est = trial.suggest_categorical("estimator", list(cfg.estimators))
            solver = trial.suggest_categorical("solver", list(cfg.solvers))
            sol = solve(self.table(est), Budget.avg_bits(budget), solver)
            if not sol.success:
                trial.set_user_attr("infeasible", sol.message)
                raise Infeasible(sol.message)
            return sol
        params = {
            name: trial.suggest_categorical(name, list(ch)) for name, ch in self.params.items()
        }
        choice = params_to_choice(self.space, params)
        table = self.table(cfg.estimators[0])
        rows = range(len(self.space))
        keys = self.space.keys
        predicted = float(sum(table.values[i, keys.index(choice[i])] for i in rows))
        return Solution(
            space=self.space,
            choice=choice,
            status=Status.FEASIBLE,
            objective=predicted,
            meta={"solver": f"optuna-{cfg.sampler}", "estimator": table.estimator},
        )

    def measure(self, plan: Solution) -> tuple[float, float]:
        """``(kl, ppl)`` of ``plan`` applied with ``rtn`` to the working copy."""
        from ..data import evaluate_lm
        from ..search.api import apply

        with apply(self.work, plan, "rtn"):
            scores = evaluate_lm(self.model, {"plan": self.work}, self.windows)
        return scores["plan"].kl, scores["plan"].ppl

    # ------------------------------------------------------------------ the objective
    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        started = time.perf_counter()
        trial.set_user_attr("worker", self.worker)
        sol = self.plan(trial)
        kl, ppl = self.measure(sol)
        over = sol.avg_bits - self.config.budgets[0] if self.config.budgets else 0.0
        plan = sol.to_dict()
        plan["meta"]["model"] = self.config.model
        attrs = {
            "avg_bits": sol.avg_bits,
            "bytes": sol.nbytes,
            "kl": kl,
            "ppl": ppl,
            "predicted": sol.objective if math.isfinite(sol.objective) else None,
            "over_budget": over if self.config.kind == "sample" else 0.0,
            "eval_time_s": round(time.perf_counter() - started, 4),
            "plan": plan,
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if self.config.kind == "sample" and self.config.budgets:
            trial.set_constraint("over_budget", over)
        return sol.avg_bits, kl
