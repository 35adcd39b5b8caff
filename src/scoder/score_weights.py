"""What scoring computes over a whole pool, from each candidate's small fields alone.

A `Pool` holds, in input order, what weighing, calibration and the best-per-seed choice read of
each candidate: its id, seed, checkpoint, execution status and pass rate, judge values, method
and reason, and its score; never its texts (a few hundred bytes a candidate, against the 5-9 KB
of text of a typical executed and judged one). The statistics are rank-based and never list
pairs: the agreement a fit reports is Kendall's tau (O(n log n)), calibration's AUC is the
Mann-Whitney U (ranks), the fits are least squares over an n x Z design or a logistic loss
over the given pairs.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scoder.errors import ScoderError
from scoder.records import Candidate
from scoder.store import iter_jsonl

EXECUTION_FEATURE = "execution"  # pass rate scaled to 0-9, usable as an extra weighted feature


class _Codes:
    """Few distinct strings (statuses, checkpoints) as small integers."""

    def __init__(self) -> None:
        self.codes = array("i")
        self.names: list[str | None] = []
        self._index: dict[str | None, int] = {}

    def append(self, value: str | None) -> None:
        code = self._index.get(value)
        if code is None:
            code = self._index[value] = len(self.names)
            self.names.append(value)
        self.codes.append(code)

    def __getitem__(self, i: int) -> str | None:
        return self.names[self.codes[i]]

    def __iter__(self) -> Iterator[str | None]:
        return (self.names[c] for c in self.codes)


class Pool:
    """The small fields of every candidate of a pool, in input order."""

    def __init__(self, aspects: Sequence[str]) -> None:
        self.aspects = list(aspects)
        self.ids: list[str] = []
        self.seeds: list[str] = []
        self._seed_names: dict[str, str] = {}  # one string object per seed
        self.checkpoints = _Codes()
        self.status = _Codes()  # None: not executed
        self.vacuous = _Codes()
        self.method = _Codes()
        self.reasons: dict[int, str] = {}  # the judge's reason, where it gave one
        self._pass_rate = array("d")
        self._values = array("d")  # len(aspects) a candidate, NaN where it has none
        # bits: 1 judged, 2 the judge gave values, 4 its scores are None, 8 it has scores, 16 scored
        self._flags = array("b")
        self._score = array("d")

    @classmethod
    def of(cls, candidates: Iterable[Candidate], aspects: Sequence[str] = ()) -> Pool:
        pool = cls(aspects)
        for c in candidates:
            pool.add(c)
        return pool

    def add(self, c: Candidate) -> None:
        self.ids.append(c.id)
        self.seeds.append(self._seed_names.setdefault(c.seed_id, c.seed_id))
        self.checkpoints.append(c.checkpoint)
        e, j = c.execution, c.judge
        self.status.append(e.status if e else None)
        self.vacuous.append(e.vacuous if e else None)
        self._pass_rate.append(e.pass_rate if e else 0.0)
        values = j.values if j is not None else None
        if values is None:
            self._values.extend([np.nan] * len(self.aspects))
        else:
            self._values.extend([float(values[name]) for name in self.aspects])
        flags = 0
        if j is not None:
            flags = 1 | (2 if values is not None else 0)
            flags |= (4 if j.scores is None else 0) | (8 if j.scores else 0)
            if j.reason is not None:
                self.reasons[len(self.ids) - 1] = j.reason
        self.method.append(j.method if j else None)
        self._flags.append(flags | (16 if c.score is not None else 0))
        self._score.append(np.nan if c.score is None else c.score)

    def __len__(self) -> int:
        return len(self.ids)

    def _flag(self, bit: int) -> np.ndarray:
        return (np.frombuffer(self._flags, dtype=np.int8) & bit).astype(bool)

    @property
    def executed(self) -> np.ndarray:
        return np.array([s is not None for s in self.status], dtype=bool)

    def is_judged(self, i: int) -> bool:
        return bool(self._flags[i] & 1)

    @property
    def judged(self) -> np.ndarray:
        return self._flag(1)

    @property
    def has_values(self) -> np.ndarray:
        return self._flag(2)

    @property
    def scores_none(self) -> np.ndarray:
        return self._flag(4)

    @property
    def has_scores(self) -> np.ndarray:
        return self._flag(8)

    @property
    def pass_rate(self) -> np.ndarray:
        return np.frombuffer(self._pass_rate, dtype=np.float64)

    @property
    def trusted_pass(self) -> np.ndarray:
        return np.array(
            [s == "passed" and v is None for s, v in zip(self.status, self.vacuous)], dtype=bool
        )

    @property
    def not_vacuous(self) -> np.ndarray:
        """Executed with tests that prove something: its pass rate counts."""
        return np.array(
            [s is not None and v is None for s, v in zip(self.status, self.vacuous)], dtype=bool
        )

    def values(self, name: str) -> np.ndarray:
        table = np.frombuffer(self._values, dtype=np.float64)
        return table.reshape(len(self), len(self.aspects))[:, self.aspects.index(name)]

    @property
    def scored(self) -> np.ndarray:
        return self._flag(16)

    def score(self, i: int) -> float | None:
        return self._score[i] if self._flags[i] & 16 else None

    @property
    def scores(self) -> np.ndarray:
        """The scores (NaN where there is none: mask with `scored`)."""
        return np.frombuffer(self._score, dtype=np.float64)

    def set_scores(self, scores: Sequence[float | None]) -> None:
        self._score = array("d", (np.nan if s is None else s for s in scores))
        for i, s in enumerate(scores):
            self._flags[i] = (self._flags[i] & ~16) | (16 if s is not None else 0)

    def features(self, names: Sequence[str]) -> np.ndarray:
        """The n x len(names) design: judge values, the execution feature as `features` makes it
        (NaN rows where the judge gave no values)."""
        columns = []
        for name in names:
            if name == EXECUTION_FEATURE:
                columns.append(np.where(self.not_vacuous, 9.0 * self.pass_rate, 0.0))
            else:
                columns.append(self.values(name))
        if not columns:
            return np.empty((len(self), 0))
        return np.ascontiguousarray(np.column_stack(columns), dtype=np.float64)

    def weighted_scores(self, weights: dict[str, float]) -> list[float | None]:
        """score = sum_z w_z x_z of each candidate, as `combined_score` computes it."""
        design = self.features(list(weights))
        w = np.array(list(weights.values()), dtype=np.float64)
        has = self.has_values
        return [float(np.dot(design[i], w)) if has[i] else None for i in range(len(self))]


# ----------------------------------------------------------------------------- one candidate


def feature_names(cfg: Any, weights: dict[str, float]) -> list[str]:
    names = [a.name for a in cfg.aspects]
    return [*names, EXECUTION_FEATURE] if EXECUTION_FEATURE in weights else names


def features(c: Candidate, names: Sequence[str]) -> list[float] | None:
    values = c.judge.values if c.judge is not None else None
    if values is None:
        return None
    row = []
    for name in names:
        if name == EXECUTION_FEATURE:
            trusted = c.execution is not None and c.execution.vacuous is None
            row.append(9.0 * c.execution.pass_rate if trusted else 0.0)
        else:
            row.append(float(values[name]))
    return row


def combined_score(c: Candidate, weights: dict[str, float]) -> float | None:
    row = features(c, list(weights))
    if row is None:
        return None
    return float(np.dot(row, list(weights.values())))


def equal_weights(cfg: Any) -> dict[str, float]:
    return {a.name: 1.0 / len(cfg.aspects) for a in cfg.aspects}


# ----------------------------------------------------------------------------- fitting


def _tied_pairs(values: np.ndarray) -> int:
    counts = np.unique(values, return_counts=True)[1].astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def _concordance(pred: np.ndarray, label: np.ndarray) -> float:
    """Fraction of pairs with different labels that the prediction orders the same way (ties 1/2),
    in O(n log n) time and O(n) memory (pairs are never listed: at 100K candidates they would
    be 80 GB). With C, D and T the concordant, discordant and prediction-tied pairs among the M
    label-distinct ones, it is (C + T/2) / M = 1/2 + S / 2M, where S = C - D is Kendall's S,
    recovered from tau-b = S / sqrt((n0 - n1)(n0 - n2))."""
    from scipy.stats import kendalltau

    n0 = len(label) * (len(label) - 1) // 2
    distinct = n0 - _tied_pairs(label)
    if distinct == 0:
        return float("nan")
    tau = kendalltau(pred, label).statistic
    if np.isnan(tau):  # every prediction tied: each pair counts one half
        return 0.5
    s = tau * np.sqrt(float(n0 - _tied_pairs(pred)) * float(distinct))
    return float(0.5 + s / (2 * distinct))


def _fit_quality(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    design = np.hstack([x, np.ones((len(x), 1))])  # the intercept does not change rankings
    w, _ = nnls(design, y)
    return w[:-1]


def _fit_pairwise(d: np.ndarray, l2: float = 1e-3) -> np.ndarray:
    """Bradley-Terry / pairwise logistic fit with non-negative weights (L-BFGS-B)."""
    from scipy.optimize import minimize
    from scipy.special import expit, log1p

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        margin = d @ w
        value = np.sum(log1p(np.exp(-np.abs(margin))) + np.maximum(-margin, 0)) + l2 * w @ w
        grad = -(d.T @ expit(-margin)) + 2 * l2 * w
        return float(value), grad

    res = minimize(
        loss, np.full(d.shape[1], 0.1), jac=True, method="L-BFGS-B", bounds=[(0, None)] * d.shape[1]
    )
    return res.x


def _label_rows(pool: Pool, labels: str | Path) -> Iterator[dict]:
    """The label rows, one at a time: a labels file's, or each executed candidate's pass rate."""
    if str(labels) == "execution":
        rates, not_vacuous = pool.pass_rate, pool.not_vacuous
        for i, status in enumerate(pool.status):
            if status is not None:
                yield {
                    "candidate_id": pool.ids[i],
                    "label": float(rates[i]) if not_vacuous[i] else 0.0,
                }
        return
    yield from iter_jsonl(labels)


def fit_weights(
    scored: Sequence[Candidate] | Pool,
    labels: str | Path,
    names: Sequence[str],
    *,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit non-negative weights to labels; report held-out agreement against equal weights.

    `labels` is a JSONL file with either {"candidate_id", "label"} rows (a quality label) or
    {"preferred", "rejected"} rows (candidate ids, a pairwise preference), or the word
    "execution" (each candidate's execution pass rate is its label). Memory: the pool's n x Z
    design and one row index a label, never a pair of candidates the labels do not name.
    """
    pool = scored if isinstance(scored, Pool) else Pool.of(scored, _aspects(names))
    names = [n for n in names if not (labels == "execution" and n == EXECUTION_FEATURE)]
    design, has = pool.features(names), pool.has_values
    by_id = {cid: i for i, cid in enumerate(pool.ids)}  # the last of a repeated id, as before
    rows = _label_rows(pool, labels)
    first = next(rows, None)
    kind = "pairwise" if first is not None and "preferred" in first else "quality"
    rows = iter([first, *rows]) if first is not None else iter(())
    rng = np.random.default_rng(seed)
    skipped = 0
    if kind == "quality":
        at, y = array("q"), array("d")
        for r in rows:
            i = by_id.get(str(r.get("candidate_id")))
            if i is None or not has[i] or not isinstance(r.get("label"), (int, float)):
                skipped += 1
                continue
            at.append(i)
            y.append(float(r["label"]))
        x_arr = design[np.frombuffer(at, dtype=np.int64)] if at else np.array([])
        y_arr = np.array(y, dtype=np.float64)
        if len(y_arr) < 4 or np.ptp(y_arr) == 0:
            raise ScoderError(
                f"--fit-weights needs at least 4 scored, labelled candidates with different labels (got {len(y_arr)})"
            )
        fit, agreement = _fit_quality, lambda w, idx: _concordance(x_arr[idx] @ w, y_arr[idx])
        n = len(y_arr)
    else:
        a_at, b_at = array("q"), array("q")
        for r in rows:
            a, b = by_id.get(str(r.get("preferred"))), by_id.get(str(r.get("rejected")))
            if a is None or b is None or not has[a] or not has[b]:
                skipped += 1
                continue
            a_at.append(a)
            b_at.append(b)
        if len(a_at) < 4:
            raise ScoderError(
                f"--fit-weights needs at least 4 pairs of scored candidates (got {len(a_at)})"
            )
        d_arr = (
            design[np.frombuffer(a_at, dtype=np.int64)]
            - design[np.frombuffer(b_at, dtype=np.int64)]
        )
        fit = _fit_pairwise  # type: ignore[assignment]

        def agreement(w: np.ndarray, idx: np.ndarray) -> float:
            m = d_arr[idx] @ w
            return float(np.mean((m > 0) + 0.5 * (m == 0)))

        x_arr = d_arr
        n = len(d_arr)
    del design, by_id
    data = (x_arr, y_arr) if kind == "quality" else (x_arr,)
    order = rng.permutation(n)
    k = min(folds, n)
    heldout, baseline = [], []
    equal = np.full(len(names), 1.0 / len(names))
    for fold in range(k):
        test = order[fold::k]
        train = np.setdiff1d(order, test)
        w = fit(*(a[train] for a in data))
        heldout.append(agreement(w, test))
        baseline.append(agreement(equal, test))
    w = fit(*data)
    total = w.sum()
    weights = {
        name: float(v / total) if total > 0 else 1.0 / len(names) for name, v in zip(names, w)
    }
    return {
        "weights": weights,
        "kind": kind,
        "labels": str(labels),
        "n": int(n),
        "skipped": skipped,
        "folds": k,
        "heldout_agreement": float(np.nanmean(heldout)),
        "equal_weights_heldout_agreement": float(np.nanmean(baseline)),
    }


def _aspects(names: Sequence[str]) -> list[str]:
    return [n for n in names if n != EXECUTION_FEATURE]


# ----------------------------------------------------------------------------- calibration


def calibration(candidates: Sequence[Candidate] | Pool, names: Sequence[str]) -> dict[str, Any]:
    """Per aspect (and the combined score): AUC and point-biserial r against a trusted pass."""
    from scipy.stats import mannwhitneyu, pointbiserialr

    pool = candidates if isinstance(candidates, Pool) else Pool.of(candidates, _aspects(names))
    rows = pool.scored & pool.executed
    passed = pool.trusted_pass[rows]
    out: dict[str, Any] = {"n": int(rows.sum()), "passed": int(passed.sum())}
    if rows.sum() < 2 or passed.all() or not passed.any():
        out["note"] = "needs both passing and failing scored candidates"
        return out
    columns = {name: pool.values(name)[rows] for name in names}
    columns["score"] = pool.scores[rows]
    for name, values in columns.items():
        u = mannwhitneyu(values[passed], values[~passed], alternative="two-sided").statistic
        auc = float(u / (passed.sum() * (~passed).sum()))
        r = float(pointbiserialr(passed, values).statistic) if np.ptp(values) > 0 else float("nan")
        out[name] = {"auc": round(auc, 4), "point_biserial": None if np.isnan(r) else round(r, 4)}
    return out
