"""MEST (Yuan et al., 2021): elastic mutation, drop by |w| + λ|g|, random growth, optional soft memory bound."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

from ..errors import InputError, InputTypeError
from .. import scores
from .._util import is_fraction, to_step
from .base import Algorithm

__all__ = ["MEST", "MEMORY_BOUNDS", "DEFAULT_BOUNDS"]

#: ``"hard"``: never above the budget (prune below it, grow back); ``"soft"``: grow above it, prune back.
MEMORY_BOUNDS = ("hard", "soft")

#: Default (lower, upper) bounds per phase, as fractions of each layer's target active count.
#: From the reference scripts at 90% sparsity (prune-to / grow-to sparsities 0.92-0.91-0.90 / 0.90
#: for EM and 0.90 / 0.85-0.875-0.90 for EM&S), i.e. mutation 2% → 1% → 0% of a layer, which is
#: 20% → 10% → 0% of its active weights (the 95% scripts scale the same way).
DEFAULT_BOUNDS = {
    "hard": ((0.8, 0.9, 1.0), (1.0, 1.0, 1.0)),
    "soft": ((1.0, 1.0, 1.0), (1.5, 1.25, 1.0)),
}

Milestone = Union[float, int]


def _as_tuple(x, what: str) -> tuple:
    """A number, a sequence, or a comma-separated string (as in :meth:`MEST.config` and method specs)."""
    if isinstance(x, str):
        try:
            return tuple(int(v) if v.strip().lstrip("+").isdigit() else float(v) for v in x.split(",") if v.strip())
        except ValueError:
            raise InputError(f"{what} must be numbers separated by commas, got {x!r}") from None
    if isinstance(x, (int, float)):
        return (x,)
    try:
        return tuple(x)
    except TypeError:
        raise InputTypeError(f"{what} must be a number or a sequence of numbers, got {x!r}") from None


def _join(values) -> str:
    """``(0.8, 0.9, 1.0)`` -> ``"0.8,0.9,1.0"`` (configs hold plain scalars only)."""
    return ",".join(repr(v) for v in values)


class MEST(Algorithm):
    """Memory-economic sparse training with elastic mutation.

    Every ΔT steps, each layer with target active count ``n`` (its count in the initial mask)
    is *pruned to the lower bound* ``round(lower · n)`` by the importance score

        s = |w| + λ |∂L/∂w|                    (λ = ``lam``; the gradient is the step's masked one,
                                                which equals the dense one at active positions)

    and then *grown at random to the upper bound* ``round(upper · n)`` (inactive positions
    after the prune, just-pruned ones included; grown weights start at 0 with fresh optimizer
    state). ``(lower, upper)`` change by phase: ``milestones`` split training into
    ``len(milestones) + 1`` phases (fractions of ``total_steps`` when floats ≤ 1, else steps).

    - ``memory_bound="hard"`` (MEST+EM, default): ``lower = (0.8, 0.9, 1.0)``, ``upper = 1``:
      mutate 20% → 10% → 0% of each layer's active weights (2% → 1% → 0% of the layer at 90%
      sparsity); the budget is never exceeded.
    - ``memory_bound="soft"`` (MEST+EM&S): ``lower = 1``, ``upper = (1.5, 1.25, 1.0)``: the
      layer is grown *above* its budget and trained that way until the next update, which prunes
      it back to the budget (now ranking the grown weights too) and grows again. The realised
      density exceeds ``density`` between updates until the last phase (``upper[-1]`` must be 1,
      so the final model is within budget from the first update of the last phase on).

    Defaults: ERK, ΔT = 100 (the paper: every 5 epochs), milestones at 90/160 and 120/160 of
    training, updates until the end of training, ``lam = 1e-4``.

    Growth is uniform among the free positions (:func:`~sparsetrain.scores.select_random`: the
    top of uniform scores up to 2²⁰ positions, a sample without replacement above). On a large
    compressed layer (:mod:`sparsetrain.storage.streaming`) the update streams: the drop score
    needs ``|g|`` only at the stored entries, where the value gradient exists anyway, and the
    growth is sampled from the index set; memory ∝ nnz, the same selection as the dense path.
    """

    name = "mest"

    def __init__(
        self,
        density: float,
        *,
        lam: float = 1e-4,
        memory_bound: str = "hard",
        lower: Union[float, Sequence[float], None] = None,
        upper: Union[float, Sequence[float], None] = None,
        milestones: Sequence[Milestone] = (0.5625, 0.75),
        end=None,
        **kwargs,
    ):
        if "drop_fraction" in kwargs or "drop_schedule" in kwargs:
            raise InputTypeError("MEST's mutation schedule is set by lower=, upper= and milestones=, not drop_fraction")
        super().__init__(density, end=end, drop_fraction=0.0, drop_schedule="constant", **kwargs)
        if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
            raise InputError(f"lam must be a finite number >= 0 (0 is pure magnitude), got {lam!r}")
        if memory_bound not in MEMORY_BOUNDS:
            raise InputError(f"unknown memory_bound {memory_bound!r}; valid values are {', '.join(MEMORY_BOUNDS)}")
        milestones = _as_tuple(milestones, "milestones")
        n_phases = len(milestones) + 1
        defaults = dict(zip(("lower", "upper"), DEFAULT_BOUNDS[memory_bound]))
        given = {"lower": lower, "upper": upper}
        for key, value in given.items():
            if value is not None:
                continue
            default = defaults[key]
            if len(default) == n_phases:
                given[key] = default
            elif len(set(default)) == 1:  # a constant default fits any number of phases
                given[key] = default[:1]
            else:
                raise InputError(
                    f"{len(milestones)} milestone(s) make {n_phases} phases but the default {key} bounds "
                    f"{default} have {len(default)}: pass {key}= with {n_phases} values"
                )
        lower, upper = given["lower"], given["upper"]
        lower, upper = _as_tuple(lower, "lower"), _as_tuple(upper, "upper")
        if len(lower) == 1:
            lower = lower * n_phases
        if len(upper) == 1:
            upper = upper * n_phases
        if len(lower) != n_phases or len(upper) != n_phases:
            raise InputError(
                f"{len(milestones)} milestone(s) make {n_phases} phases, so lower= and upper= need {n_phases} "
                f"values each (got {len(lower)} and {len(upper)})"
            )
        for i, (lo, up) in enumerate(zip(lower, upper)):
            if lo > up:
                raise InputError(
                    f"bounds inverted in phase {i}: lower={lo} > upper={up}; lower is the fraction of each "
                    "layer's budget it is pruned to, upper the fraction it is grown back to (lower <= 1 <= upper)"
                )
            if not 0.0 < lo <= 1.0:
                raise InputError(f"lower bounds must lie in (0, 1] (fractions of each layer's budget), got {lo} in phase {i}")
            if up < 1.0:
                raise InputError(f"upper bounds must be >= 1 (layers grow back at least to their budget), got {up} in phase {i}")
        if memory_bound == "hard" and any(up != 1.0 for up in upper):
            raise InputError(
                f"memory_bound='hard' never exceeds the budget, so every upper bound must be 1 (got {upper}); "
                "use memory_bound='soft' to grow above it"
            )
        if upper[-1] != 1.0:
            raise InputError(f"the last phase must end within budget (upper[-1] == 1), got upper={upper}")
        for m in milestones:
            if not isinstance(m, (int, float)) or isinstance(m, bool) or not m > 0:
                raise InputError(f"milestones must be positive (fractions of total_steps or steps), got {milestones}")
        kinds = {is_fraction(m) for m in milestones}
        if len(kinds) == 1 and list(milestones) != sorted(milestones):
            raise InputError(f"milestones must be increasing, got {milestones}")
        self.lam = float(lam)
        self.memory_bound = memory_bound
        self.lower = tuple(float(x) for x in lower)
        self.upper = tuple(float(x) for x in upper)
        self.milestones = tuple(milestones)
        #: name -> the layer's budget (active count of the initial mask)
        self._targets: dict[str, int] = {}

    def config(self):
        cfg = super().config()
        cfg.pop("drop_schedule", None)
        return {**cfg, "lam": self.lam, "memory_bound": self.memory_bound, "lower": _join(self.lower),
                "upper": _join(self.upper), "milestones": _join(self.milestones)}

    # -- schedule ------------------------------------------------------------------------
    def milestone_steps(self, total_steps: Optional[int]) -> list[int]:
        """The milestones in optimizer steps."""
        out = [to_step(m, total_steps, f"milestone {m}") for m in self.milestones]
        if out != sorted(out):
            raise InputError(f"milestones {self.milestones} are not increasing in steps ({out})")
        return out

    def phase(self, step: int, total_steps: Optional[int]) -> int:
        """Index of the phase that ``step`` belongs to (0 before the first milestone)."""
        return sum(step >= m for m in self.milestone_steps(total_steps))

    def drop_fraction(self, step, total_steps):
        """The mutation ratio at ``step``: weights regrown per update as a fraction of the budget."""
        i = self.phase(step, total_steps)
        return self.upper[i] - self.lower[i]

    # -- budgets -------------------------------------------------------------------------
    def initial_masks(self, model, named_params, counts, generator):
        self._targets = {name: int(c) for name, c in counts.items()}
        return None  # random masks with the distribution's counts

    def target_count(self, layer) -> int:
        """The layer's budget: its active count in the initial mask."""
        if layer.name not in self._targets:
            self._targets[layer.name] = layer.n_active
        return self._targets[layer.name]

    # -- one update ----------------------------------------------------------------------
    def plan(self, layers, ctx):
        i = self.phase(ctx.step, ctx.total_steps)
        lo, up = self.lower[i], self.upper[i]
        out = {}
        for layer in layers:
            if layer.frozen:
                continue  # dense from the start: pinned or capped by the distribution
            n = self.target_count(layer)
            low = min(layer.numel, int(round(lo * n)))
            high = min(layer.numel, int(round(up * n)))
            k_drop = max(0, layer.n_active - low)
            k_grow = max(0, high - (layer.n_active - k_drop))
            if k_drop or k_grow:
                out[layer.name] = (k_drop, k_grow)
        return out

    def drop_score(self, layer, ctx):
        s = scores.magnitude(layer.weight).float()
        g = layer.weight_grad
        if self.lam and g is not None and g.shape == s.shape:
            s = s + self.lam * g.detach().abs().float()
        return s

    def grow_score(self, layer, ctx):
        return scores.random_scores(layer.weight, ctx.generator)

    def select_grow(self, layer, k, available, ctx):
        """``k`` positions uniformly at random among ``available``: the ``k`` highest of
        :meth:`grow_score` up to ``masks.LARGE_LAYER`` positions (the same draws), above it sampled
        without a dense score tensor, as SET does and as the streaming update does. A subclass
        with its own :meth:`grow_score` is ranked by it."""
        if type(self).grow_score is not MEST.grow_score:
            return super().select_grow(layer, k, available, ctx)
        return scores.select_random(available, k, ctx.generator)

    # -- streaming (large compressed layers) ------------------------------------------
    @property
    def stream_growth(self) -> Optional[str]:
        """``"random"``: a large compressed layer takes the streaming update (drop by
        ``|w| + λ|g|`` over the stored entries, :meth:`stream_drop_score`; uniform random growth;
        zero regrowth); ``None`` for ``grow_init="init"`` and subclasses that change the criteria."""
        cls = type(self)
        same = (cls.select_drop is Algorithm.select_drop and cls.select_grow is MEST.select_grow
                and cls.drop_score is MEST.drop_score)
        return "random" if same and self.grow_init == "zero" else None

    def stream_drop_score(self, layer, active, ctx):
        """:meth:`drop_score` of the stored entries (``active``, see
        :mod:`sparsetrain.storage.streaming`): the value gradient exists exactly there, so this is
        the dense score restricted to the active weights, in the same order."""
        s = scores.magnitude(active.values).float()
        if self.lam and active.grad is not None:
            s = s + self.lam * active.grad.detach().abs().float()
        return s

    # -- state -------------------------------------------------------------------------
    def state_dict(self):
        return {"targets": dict(self._targets)}

    def load_state_dict(self, state):
        if state.get("targets"):
            self._targets = {n: int(c) for n, c in state["targets"].items()}
