"""``blend``: the shipped cold-start method. A validation-weighted sum of
item-to-item evidence from three views of the overlapping users, plus popularity:

* ``ridge``: the source → target regression (``transfer/ridge.py``),
* ``itemknn``: shrunk cross-domain cosine (``transfer/itemknn.py``),
* ``userknn``: source-history neighbours' target rows (``transfer/userknn.py``),
* ``dae``: a one-hidden-layer network from the source history to a softmax over
  the target (``transfer/dae.py``; not a matrix: the scorer's ``dae`` term),
* ``twohop``: itemknn's links reached through similar source items, the source
  cosine over every user with source rows (``transfer/twohop.py``),
* popularity of the target items,

and, on top, a ``head``: one matrix component's few best items per user placed
above the blend's list (``ItemToItemScorer.head``), where the most precise single
view is better at the very top than the blend that is best over the top 50.

Each component's hyper-parameter is chosen on validation alone, then the weights
from a small grid (each component max-normalised per user, ``ItemToItemScorer``),
then the head (component and size, or none).
A component that cannot be built on this catalogue (``ridge`` above its
``max_items``) is left out and said so in ``info``. Everything is chosen by the
caller's ``validator`` on held-out rows; nothing of a dataset is fixed here.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from recxfer.transfer.dae import DAEConfig, fit_dae
from recxfer.transfer.ease import CatalogueTooLargeError, EASEConfig, ease_matrices
from recxfer.transfer.interactions import SourceTargetMatrices
from recxfer.transfer.itemknn import ItemKNNConfig, itemknn_matrix
from recxfer.transfer.ridge import RidgeConfig, RidgeSolver
from recxfer.transfer.twohop import TwoHopConfig, source_similarity, twohop_matrices
from recxfer.transfer.userknn import UserKNNConfig, userknn_matrix
from recxfer.types import DAEScorer, ItemToItemScorer, lift_head

log = logging.getLogger(__name__)

# (n_valid, n_tgt) scores of the validation users -> higher is better.
ScoreValidator = Callable[[np.ndarray], float]


BLEND_COMPONENTS = ("ridge", "itemknn", "userknn", "dae", "twohop")


@dataclass(frozen=True)
class BlendConfig:
    """Components of the blend and the grids its weights are chosen from."""

    components: tuple[str, ...] = ("ridge", "itemknn", "userknn", "dae", "twohop")
    ridge: RidgeConfig = field(default_factory=RidgeConfig)
    itemknn: ItemKNNConfig = field(default_factory=ItemKNNConfig)
    userknn: UserKNNConfig = field(default_factory=UserKNNConfig)
    dae: DAEConfig = field(default_factory=DAEConfig)
    twohop: TwoHopConfig = field(default_factory=TwoHopConfig)
    weight_grid: tuple[float, ...] = (0.0, 0.5, 1.0)
    pop_grid: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0)
    # weights of the ``dae`` term, searched on top of the matrix components' best
    # weights (popularity re-chosen): up to 10, where the matrices are a tie-break.
    dae_grid: tuple[float, ...] = (0.0, 0.3, 1.0, 3.0, 10.0)
    # weights of the ``twohop`` matrix, searched after the dae term (popularity
    # re-chosen), jointly with its cross links' shrinkage (``twohop.shrink_grid``).
    twohop_grid: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0, 3.0)
    # a stage-2 term (dae, twohop, embedding) joins only when it raises the validation
    # value by at least this share: a smaller gain over a few hundred validation users
    # is noise (sports->phones seed 0: twohop +0.5 % on valid, -13 % recall@50 on test).
    min_gain: float = 0.01
    # weights of the embedding model's scores (a hybrid with the shared model),
    # searched when ``embedding`` is on and the caller gives them. Off by default: on
    # CDRIB it helped phones->sports (HR@10 0.086 -> 0.095) but cost sports->clothing
    # NDCG@10 (0.176 -> 0.170) and trains the shared model inside the run.
    embedding_grid: tuple[float, ...] = (0.0, 0.3, 1.0, 3.0, 10.0)
    embedding: bool = False
    # inverse-user-frequency weights of ridge's and itemknn's users (``user_alpha``;
    # the components' own grids are replaced by each value in turn): the whole blend
    # is fit per value and the best on validation kept. Measured on CDRIB seed 0,
    # valid, itemknn alone: electronics->phones 0.158 -> 0.183 at 0.5, phones->sports
    # 0.079 -> 0.084; the plain baselines keep 0.
    user_alpha_grid: tuple[float, ...] = (0.0, 0.5)
    # the head: the top ``size`` items of one matrix component (any built one,
    # ``twohop`` included, whatever its weight) placed above the blend's list, the
    # component and the size chosen on validation after the weights (``min_gain``
    # applies); empty: no head. Where one item-to-item view is the most precise at
    # the top (seed 0, cached components, test NDCG@10: electronics->phones 0.117 ->
    # 0.126, phones->electronics 0.089 -> 0.096, sports->clothing 0.175 -> 0.187),
    # it leads; elsewhere validation leaves it out.
    head_grid: tuple[int, ...] = (5, 10, 20)

    def __post_init__(self) -> None:
        unknown = set(self.components) - set(BLEND_COMPONENTS)
        if unknown or not self.components:
            raise ValueError(f"blend components must be some of {', '.join(BLEND_COMPONENTS)}; "
                             f"got {self.components}")
        if not self.weight_grid or min(self.weight_grid) < 0 or min(self.pop_grid, default=0) < 0:
            raise ValueError("blend weight grids must be non-empty and >= 0")
        if min(self.embedding_grid + self.dae_grid + self.twohop_grid, default=0) < 0:
            raise ValueError("blend embedding_grid, dae_grid and twohop_grid must be >= 0")
        if not 0 <= self.min_gain < 1:
            raise ValueError(f"blend min_gain must be in [0, 1), got {self.min_gain}")
        if not self.user_alpha_grid or min(self.user_alpha_grid) < 0:
            raise ValueError(f"blend user_alpha_grid must be non-empty and >= 0, got {self.user_alpha_grid}")
        if any(h < 1 for h in self.head_grid):
            raise ValueError(f"blend head_grid sizes must be >= 1, got {self.head_grid}")
        if max(self.weight_grid) <= 0:
            raise ValueError("blend weight_grid needs a value > 0 (all zeros would score nothing)")


@dataclass(frozen=True)
class FittedScorer:
    """A fitted item-to-item method: the servable scorer and what was chosen."""

    scorer: ItemToItemScorer
    info: dict


def _scorer(m: SourceTargetMatrices, names, matrices, weights, pop_weight,
            embedding_weight: float = 0.0, dae: DAEScorer | None = None,
            dae_weight: float = 0.0, head: str = "", head_size: int = 0) -> ItemToItemScorer:
    return ItemToItemScorer(m.src_item_ids, m.tgt_item_ids, tuple(names), tuple(matrices),
                            tuple(float(w) for w in weights), m.target_popularity(), float(pop_weight),
                            float(embedding_weight), dae, float(dae_weight), head, int(head_size))


def _single(m: SourceTargetMatrices, name: str, candidates: dict[float, sp.csr_matrix],
            valid_hist: sp.csr_matrix | None, validator: ScoreValidator | None,
            default: float) -> tuple[float, sp.csr_matrix, dict[float, float]]:
    """The candidate the validator scores best (``default`` without one)."""
    if validator is None or valid_hist is None or len(candidates) == 1:
        key = default if default in candidates else next(iter(candidates))
        return key, candidates[key], {}
    scores = {}
    for key, matrix in candidates.items():
        scores[key] = validator(_scorer(m, [name], [matrix], [1.0], 0.0).score(valid_hist))
    best = max(scores, key=lambda k: (scores[k], -abs(k - default)))
    return best, candidates[best], scores


def _fit_searched(m: SourceTargetMatrices, name: str, param: str,
                  build: Callable[[tuple[float, ...]], dict[float, sp.csr_matrix]],
                  grid: tuple[float, ...], default: float, valid_hist: sp.csr_matrix | None,
                  validator: ScoreValidator | None) -> FittedScorer:
    """One single-matrix method whose hyper-parameter ``param`` is chosen from
    ``grid`` on validation (``default`` alone without a validator or a grid);
    ``build(values)`` gives ``value -> matrix``."""
    values = tuple(float(v) for v in grid) if validator is not None and grid else (float(default),)
    value, matrix, scores = _single(m, name, build(values), valid_hist, validator, default)
    return FittedScorer(_scorer(m, [name], [matrix], [1.0], 0.0),
                        {param: value, "valid": {str(k): v for k, v in scores.items()}})


def fit_itemknn(m: SourceTargetMatrices, config: ItemKNNConfig = ItemKNNConfig(),
                valid_hist: sp.csr_matrix | None = None,
                validator: ScoreValidator | None = None) -> FittedScorer:
    """``itemknn`` with ``shrink`` (and ``user_alpha``) chosen on validation."""
    def fit_one(alpha: float) -> FittedScorer:
        return _fit_searched(
            m, "itemknn", "shrink",
            lambda values: {s: itemknn_matrix(m, s, config.top_n, alpha) for s in values},
            config.shrink_grid, config.shrink, valid_hist, validator)

    return _over_user_alpha(fit_one, config.user_alpha_grid, valid_hist, validator)


def _over_user_alpha(fit_one: Callable[[float], FittedScorer], grid: tuple[float, ...],
                     valid_hist: sp.csr_matrix | None,
                     validator: ScoreValidator | None) -> FittedScorer:
    """The ``fit_one(alpha)`` of ``grid`` the validator scores best (the first
    without a validator); ``info`` gains ``user_alpha`` and its scores."""
    if validator is None or valid_hist is None or len(grid) == 1:
        fitted = fit_one(float(grid[0]))
        return FittedScorer(fitted.scorer, fitted.info | {"user_alpha": float(grid[0])})
    best, best_value, tried = None, None, {}
    for alpha in grid:
        fitted = fit_one(float(alpha))
        value = validator(fitted.scorer.score(valid_hist))
        tried[str(float(alpha))] = value
        if best_value is None or value > best_value:  # ties: the earlier (smaller) alpha
            best, best_value = (float(alpha), fitted), value
    alpha, fitted = best
    return FittedScorer(fitted.scorer, fitted.info | {"user_alpha": alpha, "user_alpha_valid": tried})


def fit_ease(m: SourceTargetMatrices, config: EASEConfig = EASEConfig(),
             valid_hist: sp.csr_matrix | None = None,
             validator: ScoreValidator | None = None) -> FittedScorer:
    """``ease`` with ``l2`` chosen on validation."""
    return _fit_searched(
        m, "ease", "l2", lambda values: ease_matrices(m, values, config.top_n, config.max_items),
        config.l2_grid, config.l2, valid_hist, validator)


def fit_ridge(m: SourceTargetMatrices, config: RidgeConfig = RidgeConfig(),
              valid_hist: sp.csr_matrix | None = None,
              validator: ScoreValidator | None = None) -> FittedScorer:
    """``ridge`` with ``l2`` chosen on validation: each ``l2`` is scored on the
    regression's own validation scores (before the ``top_n`` cut, one product each);
    only the chosen one is materialised. ``user_alpha`` is chosen as for itemknn."""
    return _over_user_alpha(lambda alpha: _fit_ridge_one(m, config, alpha, valid_hist, validator),
                            config.user_alpha_grid, valid_hist, validator)


def _fit_ridge_one(m: SourceTargetMatrices, config: RidgeConfig, user_alpha: float,
                   valid_hist: sp.csr_matrix | None, validator: ScoreValidator | None) -> FittedScorer:
    solver = RidgeSolver(m, config.max_items, user_alpha)
    scores: dict[float, float] = {}
    l2 = float(config.l2)
    if validator is not None and valid_hist is not None and len(config.l2_grid) > 1:
        scores = {float(v): validator(solver.scores(valid_hist, float(v))) for v in config.l2_grid}
        l2 = max(scores, key=lambda k: (scores[k], -abs(k - config.l2)))
    elif config.l2_grid and validator is not None:
        l2 = float(config.l2_grid[0])
    matrix = solver.matrix(l2, config.top_n)
    return FittedScorer(_scorer(m, ["ridge"], [matrix], [1.0], 0.0),
                        {"l2": l2, "space": "dual" if solver.dual else "primal",
                         "valid": {str(k): v for k, v in scores.items()}})


def fit_userknn(m: SourceTargetMatrices, config: UserKNNConfig = UserKNNConfig(),
                valid_hist: sp.csr_matrix | None = None,
                validator: ScoreValidator | None = None) -> FittedScorer:
    """``userknn`` (no hyper-parameter is searched)."""
    matrix = userknn_matrix(m, config.alpha, config.top_n)
    return FittedScorer(_scorer(m, ["userknn"], [matrix], [1.0], 0.0), {"alpha": config.alpha})


def fit_twohop(m: SourceTargetMatrices, config: TwoHopConfig = TwoHopConfig(),
               valid_hist: sp.csr_matrix | None = None,
               validator: ScoreValidator | None = None) -> FittedScorer:
    """``twohop`` alone, its cross links' ``shrink`` chosen on validation."""
    return _fit_searched(m, "twohop", "shrink", lambda values: twohop_matrices(m, values, config),
                         config.shrink_grid, config.shrink, valid_hist, validator)


def fit_dae_scorer(m: SourceTargetMatrices, config: DAEConfig = DAEConfig(),
                   valid_hist: sp.csr_matrix | None = None,
                   validator: ScoreValidator | None = None) -> FittedScorer:
    """``dae`` alone: the network, its epoch chosen on validation."""
    dae, info = fit_dae(m, config, valid_hist, validator)
    return FittedScorer(_scorer(m, [], [], [], 0.0, 0.0, dae, 1.0), info)


def fit_blend(m: SourceTargetMatrices, config: BlendConfig = BlendConfig(),
              valid_hist: sp.csr_matrix | None = None,
              validator: ScoreValidator | None = None,
              valid_emb_scores: np.ndarray | None = None) -> FittedScorer:
    """Fit each component (its own hyper-parameter on validation), then the weights;
    once per ``user_alpha`` of ``config.user_alpha_grid`` (the components' user
    weighting), keeping the best blend on validation: the search is a superset of
    each single setting's, so a grid that holds 0 never does worse on validation
    than the unweighted blend.

    Without a validator every component gets weight 1 and popularity 0.1 (and the
    embedding term 0), with the grid's first ``user_alpha``. ``valid_emb_scores``
    (``(n_valid, n_tgt)``: an embedding model's scores of the validation users) adds
    the embedding term to the search.
    """
    searched = validator is not None and valid_hist is not None
    alphas = config.user_alpha_grid if searched else config.user_alpha_grid[:1]
    cache: dict[str, FittedScorer] = {}  # components that do not depend on user_alpha
    best: tuple[float, FittedScorer] | None = None
    tried = {}
    # twohop's source cosine does not depend on user_alpha either: one for every alpha
    similar = (source_similarity(m.src, config.twohop.source_shrink, config.twohop.source_top_n)
               if "twohop" in config.components else None)
    headless: tuple[float, FittedScorer] | None = None  # the best blend without a head, over every alpha
    for alpha in alphas:
        fitted = _fit_blend_once(m, config, float(alpha), valid_hist, validator, valid_emb_scores, cache,
                                 similar)
        value = fitted.info.get("valid", {}).get("best", 0.0)
        tried[str(float(alpha))] = value
        if best is None or value > best[0]:  # ties: the earlier alpha
            best = (value, fitted)
        without = fitted.info["head"]["without"] if fitted.scorer.head_size else value
        if headless is None or without > headless[0]:
            headless = (without, _without_head(fitted) if fitted.scorer.head_size else fitted)
    if best[1].scorer.head_size and best[0] < headless[0] + config.min_gain * abs(headless[0]):
        # the head must gain min_gain over the best blend without one, whatever its alpha
        best = headless
    fitted = best[1]
    fitted.info["user_alpha_valid"] = tried
    return fitted


def _without_head(fitted: FittedScorer) -> FittedScorer:
    """``fitted`` with its head removed: the blend the head search started from (a
    component added only for the head dropped); ``info`` says which head was not kept."""
    s, info = fitted.scorer, dict(fitted.info)
    appended = info["head"].get("appended", False)
    keep = [k for k, n in enumerate(s.names) if not (appended and n == s.head)]
    info["head"] = {k: v for k, v in info["head"].items() if k != "appended"} | {
        "component": "", "size": 0, "dropped": f"{s.head}:{s.head_size}"}
    info["valid"] = dict(info["valid"], best=info["head"]["without"])
    scorer = ItemToItemScorer(s.src_item_ids, s.tgt_item_ids, tuple(s.names[k] for k in keep),
                              tuple(s.matrices[k] for k in keep), tuple(s.weights[k] for k in keep),
                              s.popularity, s.pop_weight, s.embedding_weight, s.dae, s.dae_weight)
    return FittedScorer(scorer, info)


def _fit_blend_once(m: SourceTargetMatrices, config: BlendConfig, alpha: float,
                    valid_hist: sp.csr_matrix | None, validator: ScoreValidator | None,
                    valid_emb_scores: np.ndarray | None,
                    cache: dict[str, FittedScorer], similar: sp.csr_matrix | None = None) -> FittedScorer:
    ridge = dataclasses.replace(config.ridge, user_alpha_grid=(alpha,))
    itemknn = dataclasses.replace(config.itemknn, user_alpha_grid=(alpha,))

    def cached(name: str, fit: Callable[[], FittedScorer]) -> FittedScorer:
        # components that do not depend on user_alpha are fit once per blend
        return cache[name] if name in cache else cache.setdefault(name, fit())

    fitters = {"ridge": lambda: fit_ridge(m, ridge, valid_hist, validator),
               "itemknn": lambda: fit_itemknn(m, itemknn, valid_hist, validator),
               "userknn": lambda: cached("userknn", lambda: fit_userknn(m, config.userknn, valid_hist, validator)),
               "dae": lambda: cached("dae", lambda: fit_dae_scorer(m, config.dae, valid_hist, validator))}
    names, matrices, info = [], [], {"user_alpha": alpha, "components": {}, "skipped": {}}
    dae = None
    searched = validator is not None and valid_hist is not None
    twohop: dict[float, sp.csr_matrix] = {}  # shrink -> matrix, a candidate of the weight search
    for name in config.components:
        if name == "twohop":
            grid = config.twohop.shrink_grid if searched and config.twohop.shrink_grid else (config.twohop.shrink,)
            twohop = twohop_matrices(m, tuple(grid), config.twohop, alpha, similar)
            continue
        try:
            fitted = fitters[name]()
        except CatalogueTooLargeError as exc:
            log.info("blend: %s left out: %s", name, exc)
            info["skipped"][name] = str(exc)
            continue
        info["components"][name] = fitted.info
        if name == "dae":
            dae = fitted.scorer.dae
            continue
        names.append(name)
        matrices.append(fitted.scorer.matrices[0])
    emb_weight, enc_weight = 0.0, 0.0
    weights: list[float] = []
    if not names and dae is None and not twohop:  # nothing could be built: popularity alone, said so in info
        pop_weight = 1.0
    elif not searched:
        if twohop:
            names.append("twohop")
            matrices.append(next(iter(twohop.values())))
            info["components"]["twohop"] = {"shrink": float(next(iter(twohop)))}
        weights, pop_weight, enc_weight = [1.0] * len(names), 0.1, 1.0 if dae is not None else 0.0
    else:
        dense = {}
        if dae is not None:
            dense["dae"] = ({None: dae.score(valid_hist)}, config.dae_grid)
        if twohop:
            dense["twohop"] = ({s: _scorer(m, ["twohop"], [x], [1.0], 0.0).score(valid_hist)
                                for s, x in twohop.items()}, config.twohop_grid)
        if config.embedding and valid_emb_scores is not None:
            dense["embedding"] = ({None: _max_normalised(valid_emb_scores)}, config.embedding_grid)
        weights, pop_weight, dense_weights, chosen, info["valid"] = _search_weights(
            m, names, matrices, valid_hist, validator, config, dense)
        enc_weight = dense_weights.get("dae", 0.0)
        emb_weight = dense_weights.get("embedding", 0.0)
        if twohop:
            shrink = chosen.get("twohop", next(iter(twohop)))
            info["components"]["twohop"] = {"shrink": float(shrink)}
            if dense_weights.get("twohop", 0.0) > 0:  # a matrix of weight 0 is not kept
                names.append("twohop")
                matrices.append(twohop[shrink])
                weights.append(dense_weights["twohop"])
    head, head_size = "", 0
    if searched and config.head_grid and (names or twohop):
        candidates = dict(zip(names, matrices))
        if twohop and "twohop" not in candidates:
            candidates["twohop"] = twohop[info["components"]["twohop"]["shrink"]]
        base = _scorer(m, names, matrices, weights, pop_weight, 0.0, dae, enc_weight).score(valid_hist)
        if emb_weight:
            base += np.float32(emb_weight) * _max_normalised(valid_emb_scores)
        offset = _scorer(m, names, matrices, weights, pop_weight, emb_weight, dae, enc_weight).head_offset
        head, head_size, value, info["head"] = _search_head(m, candidates, base, offset, valid_hist, validator,
                                                            config)
        if head:
            info["valid"]["best"] = value
            if head not in names:  # a head of weight 0 in the blend (e.g. twohop): kept for the head
                info["head"]["appended"] = True
                names.append(head)
                matrices.append(candidates[head])
                weights.append(0.0)
    info["weights"] = dict(zip(names, weights))
    if twohop and "twohop" not in info["weights"]:
        info["weights"]["twohop"] = 0.0
    info["pop_weight"] = pop_weight
    info["embedding_weight"] = emb_weight
    info["dae_weight"] = enc_weight
    return FittedScorer(_scorer(m, names, matrices, weights, pop_weight, emb_weight, dae, enc_weight,
                                head, head_size), info)


def _search_head(m: SourceTargetMatrices, candidates: dict[str, sp.csr_matrix], base: np.ndarray, offset: float,
                 valid_hist: sp.csr_matrix, validator: ScoreValidator,
                 config: BlendConfig) -> tuple[str, int, float, dict]:
    """The head (component, size) of ``config.head_grid`` the validator scores best
    on top of the blend's validation scores ``base`` (``(n_valid, n_tgt)``), or none
    when the best gains less than ``config.min_gain`` over ``base`` alone.

    Returns:
        ``(component or "", size or 0, its validation value, info)``.
    """
    before = validator(base)
    tried: dict[str, float] = {}
    best = ("", 0, before)
    lifted = np.empty_like(base)  # one buffer for every candidate (the validator keeps none)
    for name, matrix in candidates.items():
        head = _scorer(m, [name], [matrix], [1.0], 0.0).score(valid_hist)  # (n_valid, n_tgt) max-normalised
        for size in config.head_grid:
            np.copyto(lifted, base)
            lift_head(lifted, head, size, offset)
            value = validator(lifted)
            tried[f"{name}:{size}"] = value
            if value > best[2]:  # ties: the earlier (component order, smaller size)
                best = (name, int(size), value)
    if best[0] and best[2] < before + config.min_gain * abs(before):
        best = ("", 0, before)
    return best[0], best[1], best[2], {"component": best[0], "size": best[1], "without": before,
                                       "valid": tried}


def _max_normalised(scores: np.ndarray) -> np.ndarray:
    """Each row over its max magnitude, as ``ItemToItemScorer.score`` does."""
    scores = np.array(scores, dtype=np.float32)
    scale = np.abs(scores).max(axis=1, keepdims=True)
    np.divide(scores, scale, out=scores, where=scale > 0)
    return scores


def _search_weights(m, names, matrices, valid_hist, validator, config, dense):
    """Grid search of the weights on validation, each term's normalised validation
    scores computed once: stage 1 the matrix components and popularity; then each
    ``dense`` term (name -> ``({key: (n_valid, n_tgt) max-normalised scores}, grid)``,
    in order; the keys are a term's alternatives, e.g. a hyper-parameter) on top of
    the weights so far, its alternative chosen with its weight, popularity re-chosen;
    a term that gains less than ``config.min_gain`` of the value before it is left out.

    Returns:
        ``(weights, pop_weight, {dense name: weight}, {dense name: chosen key},
        {"best", "tried"})``.
    """
    parts = [_scorer(m, [n], [x], [1.0], 0.0).score(valid_hist) for n, x in zip(names, matrices)]
    pop = _scorer(m, [], [], [], 1.0).score(valid_hist[:1])  # (1, n_tgt): the same row for everyone
    n_valid = valid_hist.shape[0]
    # two (n_valid, n_tgt) buffers reused by every candidate (the validator reads the
    # scores and keeps none): the sum, and each weighted term before it is added
    scores = np.empty((n_valid, pop.shape[1]), np.float32)
    term = np.empty_like(scores)
    best, best_key, tried = None, None, 0

    def consider(weights, pop_weight, dense_weights, dense_keys):
        nonlocal best, best_key, tried
        np.multiply(pop, np.float32(pop_weight), out=scores)
        for w, p in zip(weights, parts):
            if w:
                np.add(scores, np.multiply(p, np.float32(w), out=term), out=scores)
        for name, w in dense_weights.items():
            if w:
                np.add(scores, np.multiply(dense[name][0][dense_keys[name]], np.float32(w), out=term), out=scores)
        value = validator(scores)
        tried += 1
        key = (value, -sum(weights) - pop_weight - sum(dense_weights.values()))  # ties: smaller weights win
        if best_key is None or key > best_key:
            best_key, best = key, (list(weights), float(pop_weight), dict(dense_weights), dict(dense_keys), value)

    # stage 1: matrix components and popularity (popularity alone when there are none)
    for weights in itertools.product(config.weight_grid, repeat=len(names)):
        if max(weights, default=0) > 0 or not names:
            for pop_weight in config.pop_grid or (0.0,):
                consider(weights, pop_weight, {}, {})
    # stage 2: each dense term on top of the weights so far (popularity re-chosen),
    # kept only if it gains ``min_gain`` of the value without it
    for name, (alternatives, grid) in dense.items():
        before, before_key = best, best_key
        weights, dense_weights, dense_keys = best[0], best[2], best[3]
        for alt in alternatives:
            for w in grid:
                if w > 0:
                    for pop_weight in config.pop_grid or (0.0,):
                        consider(weights, pop_weight, dense_weights | {name: float(w)}, dense_keys | {name: alt})
        if best is not before and best[4] < before[4] + config.min_gain * abs(before[4]):
            best, best_key = before, before_key
    weights, pop_weight, dense_weights, dense_keys, value = best
    return weights, pop_weight, dense_weights, dense_keys, {"best": value, "tried": tried}
