"""The metric registry: one :class:`Metric` per name, carrying everything the rest of the package
needs to know about it (its direction, the record names it yields, what it consumes and what it is
evidence of), so that adding a metric is one function and its registration:

    @register_metric("mean_logit", "mean of the extractor's top logit", higher_is_better=True)
    def _mean_logit(ctx: MetricContext) -> list[dict]:
        return [ctx.record("mean_logit", ctx.fake_logits.max(1).mean(), "mean top logit")]

`diffatlas evaluate`, study specs, the statistics (direction, which claim a metric serves) and the
reports read these fields; none keeps a table of metric names of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..registry import Registry

ROLES = ("quality", "class", "likelihood", "coverage")


@dataclass(frozen=True)
class Metric:
    """A registered metric.

    fn: feature metrics take a MetricContext and return records; model metrics (needs_model) take
        (denoiser, data, labels, **settings).
    higher_is_better: the direction of every record it yields.
    produces: the metric names of its records (e.g. pr -> precision, recall); (name,) by default.
    role: what the metric is evidence of in the paper's claims: "quality" (sample quality against the
        data: the claims that compare processes, sizes, guidance), "class" (class specificity of
        conditional or guided samples), "likelihood", "coverage" (fidelity/diversity split).
    needs_real_features: reads features of real images (not only their cached statistics).
    needs_labels: judges each sample against the class it was asked for; evaluation computes it on the
        dataset's own evaluation classifier whatever the quality extractor is.
    needs_model: reads the snapshot's denoiser instead of sample features.
    """

    name: str
    fn: Callable[..., list[dict[str, Any]]]
    higher_is_better: bool
    produces: tuple[str, ...]
    role: str | None = None
    needs_real_features: bool = False
    needs_labels: bool = False
    needs_model: bool = False

    def __call__(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return self.fn(*args, **kwargs)


METRICS: Registry[Metric] = Registry("metric")


def register_metric(name: str, description: str, *, higher_is_better: bool, produces: tuple[str, ...] | None = None,
                    role: str | None = None, needs_real_features: bool = False, needs_labels: bool = False,
                    needs_model: bool = False) -> Callable[[Callable[..., list[dict[str, Any]]]], Metric]:
    """Decorator: register `fn` as metric `name` (see :class:`Metric` for the fields)."""
    if role is not None and role not in ROLES:
        raise ValueError(f"metric {name!r}: role must be one of {ROLES} or None, got {role!r}")
    taken = {p: m.name for m in (METRICS.get(n) for n in METRICS.names()) for p in m.produces}
    out = tuple(produces or (name,))
    clash = [p for p in out if p in taken]
    if clash:
        raise ValueError(f"metric {name!r} would yield {clash}, already yielded by {[taken[p] for p in clash]}")

    def add(fn: Callable[..., list[dict[str, Any]]]) -> Metric:
        spec = Metric(name, fn, bool(higher_is_better), out, role, needs_real_features, needs_labels, needs_model)
        METRICS.register(name, description)(spec)
        return spec

    return add


def yielded_by(record_metric: str) -> Metric | None:
    """The registered metric whose records carry the name `record_metric` (e.g. precision -> pr)."""
    for name in METRICS.names():
        m = METRICS.get(name)
        if record_metric in m.produces:
            return m
    return None


def higher_is_better(record_metric: str) -> bool:
    """The direction of a record name, from the registry; a name no metric yields is an error (its
    records must say higher_is_better themselves)."""
    m = yielded_by(record_metric)
    if m is None:
        raise UserError(f"metric {record_metric!r} is not one diffatlas computes and its records do not say whether "
                        f"higher is better; registered metrics: {', '.join(METRICS.names())}")
    return m.higher_is_better


def role(record_metric: str) -> str | None:
    """What a record name is evidence of (Metric.role), None for a name no metric yields."""
    m = yielded_by(record_metric)
    return m.role if m is not None else None
