"""Where a search's accuracies come from: a recorded table, or real fine-tune-and-test runs."""
from __future__ import annotations

import logging
from typing import Callable, Mapping, Protocol

from planner.scheme import Scheme

log = logging.getLogger(__name__)


class NotEvaluatedError(KeyError):
    """A database evaluator asked for a scheme it has no record of."""


class Evaluator(Protocol):
    """Top-1 error of a split scheme; counts what it spends."""

    base_error: float   # unmodified model's top-1 error
    evaluations: int    # look-ups or evaluations spent so far

    def evaluate(self, scheme: Scheme) -> float: ...


class DBEvaluator:
    """Looks schemes up in a recorded table; every look-up counts as an evaluation."""

    def __init__(self, errors: Mapping[Scheme, float], base_error: float):
        self.errors = dict(errors)
        self.base_error = float(base_error)
        self.evaluations = 0
        self.log: list[Scheme] = []

    def evaluate(self, scheme: Scheme) -> float:
        if scheme not in self.errors:
            raise NotEvaluatedError(f"expected a recorded scheme, got {scheme} (not in the database)")
        self.evaluations += 1
        self.log.append(scheme)
        return self.errors[scheme]


EvaluateFn = Callable[..., object]   # planner.evaluate.evaluate_scheme's signature


class FullSpaceEvaluator(DBEvaluator):
    """Looks recorded schemes up; fine-tunes and tests the others, recording them in `db`.

    `evaluate_fn(model_name, scheme, finetune_epochs, db, seed, train_limit=, test_limit=)
    -> AccuracyRecord`
    defaults to `planner.evaluate.evaluate_scheme`, imported when first needed.
    """

    def __init__(self, errors: Mapping[Scheme, float], base_error: float, model_name: str,
                 db, finetune_epochs: float, seed: int = 0, evaluate_fn: EvaluateFn | None = None,
                 train_limit: int | None = None, test_limit: int | None = None):
        super().__init__(errors, base_error)
        self.model_name = model_name
        self.db = db
        self.finetune_epochs = finetune_epochs
        self.seed = seed
        self._evaluate_fn = evaluate_fn
        self.limits = {"train_limit": train_limit, "test_limit": test_limit}   # images; None: all
        self.new_evaluations = 0

    def evaluate(self, scheme: Scheme) -> float:
        if scheme not in self.errors:
            fn = self._evaluate_fn
            if fn is None:
                from planner.evaluate import evaluate_scheme as fn  # lazy: pulls in torch data
            rec = fn(self.model_name, scheme, self.finetune_epochs, self.db, self.seed, **self.limits)
            self.errors[scheme] = float(rec.top1_error)
            self.new_evaluations += 1
            log.info("evaluated %s: top-1 error %.4f", scheme, rec.top1_error)
        return super().evaluate(scheme)
