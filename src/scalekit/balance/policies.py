"""The balancing policies: round robin, least outstanding, power of two choices (peak EWMA)."""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import TypeVar

from scalekit.balance._base import Balancer, _Node

__all__ = ["LeastOutstanding", "PowerOfTwoChoices", "RoundRobin"]

T = TypeVar("T", bound=Hashable)


class RoundRobin(Balancer[T]):
    """Each available endpoint in turn; smooth weighted round robin when weights differ.

    With equal weights (and no endpoint warming up) this is a plain rotation. Otherwise it is
    nginx's smooth weighted round robin: over a cycle each endpoint is chosen in proportion to its
    effective weight, interleaved rather than in bursts. See :class:`Balancer` for the arguments.
    """

    def _pick(self, candidates: list[_Node[T]], now: float) -> _Node[T]:
        if now >= self._warm_until and self._uniform(candidates):
            self._cursor = cursor = (self._cursor + 1) % len(candidates)
            return candidates[cursor]
        total = 0.0
        best = candidates[0]
        for node in candidates:
            weight = self._weight(node, now)
            node.current += weight
            total += weight
            if node.current > best.current:
                best = node
        best.current -= total
        return best

    @staticmethod
    def _uniform(candidates: list[_Node[T]]) -> bool:
        first = candidates[0].weight
        return all(node.weight == first for node in candidates)


class LeastOutstanding(Balancer[T]):
    """The endpoint with the fewest calls in flight per unit of weight ("least connections").

    Outstanding calls are counted through :meth:`Balancer.lease`. Ties are broken by rotating the
    starting point, so idle endpoints share the load evenly. See :class:`Balancer` for the
    arguments.
    """

    def _pick(self, candidates: list[_Node[T]], now: float) -> _Node[T]:
        n = len(candidates)
        self._cursor = start = (self._cursor + 1) % n
        best = candidates[start]
        best_load = (best.outstanding + 1) / self._weight(best, now)
        for i in range(1, n):
            node = candidates[(start + i) % n]
            load = (node.outstanding + 1) / self._weight(node, now)
            if load < best_load:
                best, best_load = node, load
        return best


class PowerOfTwoChoices(Balancer[T]):
    """Two endpoints at random, keep the cheaper by peak EWMA latency x (outstanding + 1) / weight.

    The cost is Finagle's and Linkerd's peak EWMA: a slow response raises an endpoint's latency
    estimate at once, fast ones lower it gradually (over ``decay_time``), and the estimate decays
    while the endpoint is idle so it gets probed again. Choosing costs O(1) whatever the number of
    endpoints, and is "nearly as good as a full scan" while avoiding the herd behaviour of always
    picking the global best. See :class:`Balancer` for the arguments.
    """

    def _cost(self, node: _Node[T], now: float) -> float:
        ewma = node.ewma
        if ewma:
            ewma *= math.exp((node.ewma_at - now) / self._decay_time)
        return (ewma + 1e-6) * (node.outstanding + 1) / self._weight(node, now)

    def _pick(self, candidates: list[_Node[T]], now: float) -> _Node[T]:
        n = len(candidates)
        rnd = self._random
        i = int(rnd() * n)
        j = int(rnd() * (n - 1))
        if j >= i:
            j += 1
        a, b = candidates[i], candidates[j]
        cost_a, cost_b = self._cost(a, now), self._cost(b, now)
        if cost_a == cost_b:
            return a if rnd() < 0.5 else b
        return a if cost_a < cost_b else b
