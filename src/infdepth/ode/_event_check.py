"""The events of one per-sample solve, checked after every pass of the loop.

:meth:`EventCheck.detect` samples every event function inside each accepted step (one
batched call per event: ``samples_per_step`` points per row) and says which rows may fire;
:meth:`EventCheck.resolve` brackets the first sign change of each event in those rows,
root-finds the terminal events whose bracket can come first, stops each sample at the
earliest, and records the non-terminal crossings up to there. Host reads: none in
``detect`` (whether any row may fire is part of the loop's one read per pass), a few per
pass with a crossing.
"""

from __future__ import annotations

import math

import torch

from infdepth.ode._events import (
    Event,
    PolynomialFit,
    SteadyState,
    differentiable_event,
    locate,
    polynomial_fit,
    polynomial_guess,
)
from infdepth.ode._per_sample_step import dense_per_sample
from infdepth.ode._stepping import VectorField


def _take(x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return x if rows is None else x.index_select(0, rows)


def _put(full: torch.Tensor, vals: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    if rows is None:
        return vals
    if full.requires_grad or vals.requires_grad:
        return full.index_copy(0, rows, vals)
    return full.index_copy_(0, rows, vals)


def _detached(x: torch.Tensor) -> torch.Tensor:
    return x.detach() if x.requires_grad else x


def _sample_weights(n: int, exact: bool, dense: torch.Tensor, t_dtype: torch.dtype,
                    dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The fractions ``1/n .. (n-1)/n`` as a column ``(n - 1, 1)`` and the weights ``(n - 1,
    R)`` of the dense output there (``exact``; ``R`` its rows), or ``(n - 1, 3)`` of the
    cubic Hermite interpolant on ``(h f0, y1 - y0, h f1)``."""
    theta = torch.tensor([[float(i)] for i in range(1, n)], dtype=t_dtype, device=device) / n
    th = theta.to(dtype)
    if exact:
        weights = th.expand(-1, dense.shape[1]).cumprod(1) @ dense.T
    else:
        th = th.view(-1)
        weights = torch.stack([th - 2 * th**2 + th**3, 3 * th**2 - 2 * th**3, th**3 - th**2], 1)
    return theta, weights


class EventCheck:
    """Per-sample state of a solve's events: each function's value at the last accepted step's
    end, the stop (time, which event) and the non-terminal crossings found so far."""

    def __init__(self, events: tuple[Event | SteadyState, ...], f: VectorField,
                 t0: torch.Tensor, y0: torch.Tensor, dense: torch.Tensor, compact: bool) -> None:
        """``dense`` the solver's dense-output matrix."""
        self.events, self.f, self.dense, self.compact = events, f, dense, compact
        batch, dev = y0.shape[0], y0.device
        # each event function at the rows' last accepted step ends, (1, batch)
        self.g_prev = [_detached(ev.value(t0, y0)).unsqueeze(0) if isinstance(ev, Event)
                       else None for ev in events]
        self.event_t = torch.full((batch,), float("nan"), dtype=t0.dtype, device=dev)
        self.event_index = torch.full((batch,), -1, dtype=torch.long, device=dev)
        self.found: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        self._dtypes = (t0.dtype, y0.dtype, dev)
        # constants of this solve (its solver, dtypes and device), built at first use; they
        # live as long as the solve, so nothing is shared between solves
        self._weights: dict[tuple[int, bool], tuple[torch.Tensor, torch.Tensor]] = {}
        self._fits: dict[int, PolynomialFit] = {}
        # per pass: each event's samples (n + 1, m) (row 0 the step's start) and crossings
        self._g: list[torch.Tensor | None] = []
        self._cross: list[torch.Tensor] = []
        self._exact = True

    def _sample_weights(self, n: int, exact: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if (n, exact) not in self._weights:
            self._weights[n, exact] = _sample_weights(n, exact, self.dense, *self._dtypes)
        return self._weights[n, exact]

    def _fit(self, w: int) -> PolynomialFit:
        if w not in self._fits:  # once per solve
            self._fits[w] = polynomial_fit(w, self._dtypes[2])
        return self._fits[w]

    def _points(self, n: int, t: torch.Tensor, h: torch.Tensor, y: torch.Tensor,
                y1: torch.Tensor, t1: torch.Tensor, k_end: torch.Tensor, hk: torch.Tensor,
                exact: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Times ``(n * m,)`` and states at the fractions ``1/n, ..., 1`` of the ``m`` steps."""
        if n == 1:
            return t1, y1
        m = y.shape[0]
        theta, weights = self._sample_weights(n, exact)
        ts = torch.addcmul(t, theta, h)  # (n - 1, m)
        if exact:
            basis = hk.reshape(hk.shape[0], -1)
        else:
            hf1 = k_end.reshape(m, -1) * h.to(y.dtype).unsqueeze(1)
            basis = torch.stack([hk[0], (y1 - y).reshape(m, -1), hf1]).reshape(3, -1)
        inner = torch.addmm(y.reshape(1, -1), weights, basis)
        return (torch.cat([ts.reshape(-1), t1]),
                torch.cat([inner.view((n - 1) * m, *y.shape[1:]), y1]))

    def detect(self, rows: torch.Tensor | None, acc: torch.Tensor, last: torch.Tensor,
               t: torch.Tensor, h: torch.Tensor, y: torch.Tensor, y1: torch.Tensor,
               t1: torch.Tensor, k_end: torch.Tensor, hk: torch.Tensor,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """Sample every event in the working set's steps (rows ``rows`` of the batch, all when
        ``None``); the ``(m,)`` mask of accepted steps in which one may fire (written into
        ``out`` when given)."""
        self._exact = hk.shape[0] == self.dense.shape[0]
        self._g, self._cross = [], []
        points: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        cand: torch.Tensor | None = None
        with torch.no_grad():
            for j, ev in enumerate(self.events):
                if isinstance(ev, SteadyState):
                    reached = acc & ~last & ev.reached(k_end, y1)
                    self._g.append(None)
                    self._cross.append(reached)
                    cand = reached if cand is None else cand | reached
                    continue
                n = ev.samples_per_step
                if n not in points:
                    points[n] = self._points(n, t, h, y, y1, t1, k_end, hk, self._exact)
                g = ev.value(*points[n])
                g = (g.detach() if g.requires_grad else g).view(n, -1)
                prev = self.g_prev[j]
                assert prev is not None
                gw = (prev if rows is None else prev.index_select(1, rows)).to(g.dtype)
                # a rejected step's samples are its start's value: no crossing there
                g = torch.where(acc, g, gw)
                samples = torch.cat([gw, g])
                cross = ev.crossed(samples[:-1], samples[1:])
                kept = g[-1:]
                self.g_prev[j] = kept if rows is None else prev.index_copy_(1, rows, kept)
                self._g.append(samples)
                self._cross.append(cross)
                if cand is None and out is not None and len(self.events) == 1:
                    cand = torch.any(cross, 0, out=out)
                else:
                    cand = cross.any(0) if cand is None else cand | cross.any(0)
        assert cand is not None  # a solve with events has at least one
        if out is not None and cand is not out:
            cand = out.copy_(cand)
        return cand

    def _resample(self, cand: torch.Tensor, t: torch.Tensor, h: torch.Tensor, y: torch.Tensor,
                  hk: torch.Tensor) -> None:
        """Retake the interior samples of the rows ``cand`` on the dense output (they were
        taken on the Hermite interpolant while its extra stages were not computed)."""
        sel = cand.nonzero().squeeze(1)
        for j, ev in enumerate(self.events):
            samples = self._g[j]
            if not isinstance(ev, Event) or ev.samples_per_step == 1 or samples is None:
                continue
            n, k = ev.samples_per_step, sel.shape[0]
            column = self._sample_weights(n, True)[0]
            theta = column.expand(-1, k).reshape(-1)
            ts = (t[sel].unsqueeze(0) + column * h[sel]).reshape(-1)
            ys = dense_per_sample(theta, y[sel].repeat(n - 1, *([1] * (y.ndim - 1))),
                                  hk[:, sel].repeat(1, n - 1, 1), self.dense)
            inner = ev.value(ts, ys).detach().to(samples.dtype).view(n - 1, k)
            samples = samples.clone()
            samples[1:n, sel] = inner
            self._g[j] = samples
            cross = self._cross[j].clone()
            cross[:, sel] = ev.crossed(samples[:-1, sel], samples[1:, sel])
            self._cross[j] = cross

    def _root(self, j: int, r: torch.Tensor, i: torch.Tensor, t: torch.Tensor,
              h: torch.Tensor, y: torch.Tensor, hk: torch.Tensor) -> torch.Tensor:
        """Fractions of the steps of working rows ``r`` where event ``j`` crosses in their
        sub-intervals ``i``."""
        ev, samples = self.events[j], self._g[j]
        assert isinstance(ev, Event) and samples is not None
        n = ev.samples_per_step
        lo, hi = i.to(t.dtype) / n, (i + 1).to(t.dtype) / n
        guess = polynomial_guess(samples, i, r, n, self._fit) if n > 1 else None
        return locate(ev, t[r], h[r], y[r], hk[:, r], self.dense, lo, hi, samples[i, r],
                      samples[i + 1, r], guess)

    def _resolve_one(self, rows: torch.Tensor | None, cand: torch.Tensor, n_cand: int,
                     t: torch.Tensor, h: torch.Tensor, y: torch.Tensor, hk: torch.Tensor,
                     stop_t: torch.Tensor, y_new: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`resolve` for a solve whose only event is a terminal :class:`Event` with
        exact samples: every row in ``cand`` (``n_cand`` of them) stops in its first
        sub-interval with a crossing (the same result, fewer operations; fewer still when
        every row of the working set stops: no selection of rows)."""
        ev, samples = self.events[0], self._g[0]
        assert isinstance(ev, Event) and samples is not None
        n, m = ev.samples_per_step, t.shape[0]
        every = n_cand == m
        r = torch.arange(m, device=t.device) if every else cand.nonzero().squeeze(1)
        cross = self._cross[0] if every else self._cross[0][:, r]
        i = cross.to(torch.uint8).argmax(0)
        tr, hr, yr, hkr = (t, h, y, hk) if every else (t[r], h[r], y[r], hk[:, r])
        lo = i.to(t.dtype) / n
        guess = (polynomial_guess(samples, i, None if every else r, n, self._fit) if n > 1
                 else None)
        theta = locate(ev, tr, hr, yr, hkr, self.dense, lo, lo + 1.0 / n, samples[i, r],
                       samples[i + 1, r], guess)
        y_star = dense_per_sample(theta, yr, hkr, self.dense)
        t_ev, y_ev = differentiable_event(ev, self._slope(t, y, r), tr + theta * hr, y_star)
        grad = torch.is_grad_enabled()  # then the gradient evaluated f at the event
        if every:
            extra = torch.ones(m, dtype=torch.long, device=t.device) if grad else None
            self.event_t = _put(self.event_t, t_ev, rows)
            self.event_index = _put(self.event_index, torch.zeros_like(cand, dtype=torch.long),
                                    rows)  # a copy: the loop's tensors update in place
            return _detached(t_ev).clone(), y_ev, cand, extra
        extra = None
        if grad:
            extra = torch.zeros(m, dtype=torch.long, device=t.device).index_fill(0, r, 1)
        self.event_t = _put(self.event_t, _take(self.event_t, rows).index_put((r,), t_ev), rows)
        self.event_index = _put(self.event_index,
                                _take(self.event_index, rows).index_fill(0, r, 0), rows)
        return (stop_t.index_put((r,), t_ev.detach()), y_new.index_put((r,), y_ev), cand,
                extra)

    def _slope(self, t: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> VectorField:
        """``f`` at event points of working rows ``r`` (with ``compact=False`` on the whole
        working set, the other rows at their step's start; repeated rows in turns)."""
        if self.compact:
            return self.f

        def slope(ts: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
            seen: dict[int, int] = {}
            ranks = []
            for v in r.tolist():  # a row's k-th crossing of the step goes in the k-th call
                ranks.append(seen.get(v, 0))
                seen[v] = ranks[-1] + 1
            rank = torch.tensor(ranks, device=r.device)
            out = torch.empty_like(ys)
            for q in range(max(ranks) + 1):
                k = (rank == q).nonzero().squeeze(1)
                rk = r[k]
                full = self.f(t.index_put((rk,), ts[k]), y.detach().index_put((rk,), ys[k]))
                out = out.index_copy(0, k, full[rk])
            return out

        return slope

    def resolve(self, rows: torch.Tensor | None, acc: torch.Tensor, cand: torch.Tensor,
                t: torch.Tensor, h: torch.Tensor, y: torch.Tensor, hk: torch.Tensor,
                t1: torch.Tensor, stop_t: torch.Tensor, y_new: torch.Tensor, n_cand: int = -1
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Stops and crossings in the rows ``cand`` (``n_cand`` of them, -1: not counted):
        ``(stop_t, y_new, stopped, extra)``, the
        working set's stopping times and states (at the earliest terminal event where one
        fired), which stopped, and the evaluations of ``f`` the gradients took (``None``: none)."""
        one = self.events[0]
        if (self._exact and len(self.events) == 1 and isinstance(one, Event)
                and one.terminal):
            return self._resolve_one(rows, cand, n_cand, t, h, y, hk, stop_t, y_new)
        m, dev, grad = t.shape[0], t.device, torch.is_grad_enabled()
        extra = torch.zeros(m, dtype=torch.long, device=dev)
        if not self._exact and hk.shape[0] == self.dense.shape[0]:
            self._resample(cand, t, h, y, hk)
        inf = torch.full((m,), math.inf, dtype=t.dtype, device=dev)
        first: list[torch.Tensor | None] = []
        lo_first, bound = [], inf
        for j, ev in enumerate(self.events):  # the first sub-interval of each terminal event
            cross = self._cross[j]
            if isinstance(ev, SteadyState):
                first.append(None)
                lo_first.append(torch.where(cross, 1.0, inf))
                bound = torch.minimum(bound, lo_first[-1]) if len(self.events) > 1 else bound
            elif ev.terminal:
                i = cross.to(torch.uint8).argmax(0)
                has = cross.any(0)
                first.append(i)
                lo_first.append(torch.where(has, i.to(t.dtype) / ev.samples_per_step, inf))
                if len(self.events) > 1:
                    bound = torch.minimum(bound, torch.where(
                        has, (i + 1).to(t.dtype) / ev.samples_per_step, inf))
            else:
                first.append(None)
                lo_first.append(inf)
        several = sum(isinstance(ev, SteadyState) or ev.terminal for ev in self.events) > 1
        theta_stop, which = inf, torch.full((m,), -1, dtype=torch.long, device=dev)
        for j, ev in enumerate(self.events):
            if isinstance(ev, Event) and not ev.terminal:
                continue
            go = lo_first[j] < inf
            if several:  # only a bracket that can hold the earliest stop
                go = go & (lo_first[j] <= bound)
            if isinstance(ev, SteadyState):
                theta = torch.where(go, 1.0, inf)
            elif not bool(go.any()):
                continue
            else:
                r = go.nonzero().squeeze(1)
                sub = first[j]
                assert sub is not None
                theta = inf.index_put((r,), self._root(j, r, sub[r], t, h, y, hk))
            better = theta < theta_stop
            theta_stop = torch.where(better, theta, theta_stop)
            which = torch.where(better, j, which)
        stopped = which >= 0
        ev_t = _take(self.event_t, rows)
        if bool(stopped.any()):
            for j, ev in enumerate(self.events):
                here = which == j
                if not bool(here.any()):
                    continue
                r = here.nonzero().squeeze(1)
                if isinstance(ev, SteadyState):
                    ev_t = ev_t.index_put((r,), t1[r].to(ev_t.dtype))
                    continue
                th = theta_stop[r]
                t_star = t[r] + th * h[r]
                y_star = dense_per_sample(th, y[r], hk[:, r], self.dense)
                t_ev, y_ev = differentiable_event(ev, self._slope(t, y, r), t_star, y_star)
                if grad:  # the gradient evaluated f at the event
                    extra = extra.index_fill(0, r, 1)
                stop_t = stop_t.index_put((r,), t_ev.detach())
                y_new = y_new.index_put((r,), y_ev)
                ev_t = ev_t.index_put((r,), t_ev)
            self.event_t = _put(self.event_t, ev_t, rows)
            self.event_index = _put(self.event_index, torch.where(
                stopped, which, _take(self.event_index, rows)), rows)
        for j, ev in enumerate(self.events):  # non-terminal crossings up to the stop
            if not isinstance(ev, Event) or ev.terminal:
                continue
            n = ev.samples_per_step
            lo = torch.arange(n, dtype=t.dtype, device=dev).unsqueeze(1) / n
            pairs = (self._cross[j] & (lo <= theta_stop)).nonzero()
            if pairs.shape[0] == 0:
                continue
            i, r = pairs[:, 0], pairs[:, 1]
            th = self._root(j, r, i, t, h, y, hk)
            keep = th <= theta_stop[r]
            if not bool(keep.all()):
                i, r, th = i[keep], r[keep], th[keep]
            t_star = t[r] + th * h[r]
            y_star = dense_per_sample(th, y[r], hk[:, r], self.dense)
            t_cross, _ = differentiable_event(ev, self._slope(t, y, r), t_star, y_star)
            self.found.append((r if rows is None else rows[r], t_cross, j))
            if grad:  # the gradient evaluated f at the crossing
                extra = extra.index_add(0, r, torch.ones_like(r))
        return stop_t, y_new, stopped, extra

    def crossings(self, direction: float = 1.0
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(sample, time, event index)`` of the non-terminal crossings, by sample and then
        in the order of integration (``direction`` -1: decreasing times)."""
        dev = self.event_t.device
        if not self.found:
            empty = torch.zeros(0, dtype=torch.long, device=dev)  # nothing to share
            return empty, self.event_t.new_zeros(0), empty
        rows = torch.cat([r for r, _, _ in self.found])
        times = torch.cat([tt for _, tt, _ in self.found])
        index = torch.cat([torch.full_like(r, j) for r, _, j in self.found])
        order = torch.argsort(direction * times.detach(), stable=True)
        order = order[torch.argsort(rows[order], stable=True)]
        return rows[order], times[order], index[order]

