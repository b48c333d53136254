"""The g-infinity meta-layer: infinitely many gated residual sub-layers, ``ceil(w)`` of them used.

``g_0 = x``, ``g_{i+1} = h(merge(g_i, f_i(g_i), delta_w(i)))``, ``g_inf = h(g_{ceil(w)})``
(Meier, 2018, section III.B).  Sub-layers are created lazily, in chunks of
``grow_step``, when ``ceil(w)`` passes the number already built; see
:func:`infdepth.depth.growth.grow` for registering them with a running optimizer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from infdepth.depth import forward, penalty
from infdepth.depth.events import record_growth
from infdepth.depth.gates import Gate, make_gate
from infdepth.depth.idempotent import check_idempotent, make_h
from infdepth.depth.merges import make_merge
from infdepth.depth.naming import too_many_blocks
from infdepth.depth.penalty import PENALTY_EPS, last_parameterised  # noqa: F401 (PENALTY_EPS re-exported)
from infdepth.errors import DivergenceError, InputError, check_choice, check_float, check_int

BlockFactory = Callable[[int], nn.Module]
Penalised = Callable[[nn.Module], list[Tensor]]

W_PENALTIES = ("l2", "param_scaled")
PENALTY_GATES = ("attached", "detached")

DEFAULT_MAX_BLOCKS = 1000  # the default bound on the sub-layers of one layer (max_blocks)


class InfiniteDepth(nn.Module):
    """A layer with infinitely many sub-layers whose trainable depth ``w`` decides how many run.

    Args:
        block: factory ``f(i) -> nn.Module`` for sub-layer ``i``; each must keep the shape.
            Called inside a forked RNG seeded from ``(seed, i)``, so sub-layer ``i``
            starts from the same values whenever (and on whichever process) it is built.
        h: the idempotent map after each sub-layer: ``"identity"``, ``"relu"``,
            ``"batchnorm"`` (fixed gamma=1, beta=0, batch statistics) or a module.
        w0: initial depth ``w``; ``w <= 0`` makes the layer ``h(x)``.
        gate: ``"exp"`` (the paper's), ``"stretched"`` or a :class:`~infdepth.depth.gates.Gate`.
        alpha, trainable_alpha: stretch factor of the ``"stretched"`` gate.
        merge: ``"residual"`` (paper), ``"convex"`` (original code's non-ResNet mode)
            or ``"geometric"`` (paper section V.A).
        grow_step: sub-layers are created in chunks of this many.
        w_l2: factor of the depth penalty (``w_l2 * w**2``).
        w_penalty: ``"l2"`` or ``"param_scaled"`` (``w_l2 * params_per_block * w**2``,
            paper section V.B).
        block_l2: factor of the conditional block penalty
            ``sum_i delta_w(i + eps) * l2(penalised params of block i)``.
        gamma_shift: for a penalised BatchNorm the term is ``sum(relu(gamma**2 - shift))``
            (the original code's "max free gamma").
        penalised: ``block -> [tensors]`` to penalise; default the last parameterised
            submodule's weight (BatchNorm: its gamma).
        geometric_eps: ``eps`` of the geometric merge.
        seed: seed of sub-layer initialisation (default drawn from torch's global RNG), kept
            in the buffer ``sublayer_seed``: saved in ``state_dict()``, broadcast by DDP.
        max_blocks: the most sub-layers it may build (``None``: no bound); a ``w`` needing
            more raises :class:`~infdepth.errors.InputError` before anything is allocated.
        zero_init: every sub-layer is built as the zero function: the last parameterised
            submodule's weight (BatchNorm: gamma) and bias are zeroed, so a sub-layer that
            ``w`` switches in changes nothing until it has trained (as zero-initialised
            residual branches do).
        penalty_gate: ``"attached"`` (the paper's: the block penalty's gate
            ``delta_w(i + eps)`` is differentiated in ``w``, which pulls ``w`` down) or
            ``"detached"`` (the gate weighs the penalty but only ``w_l2`` acts on ``w``).
        example_input: a sample input; if given, ``h`` and sub-layer 0 are checked on it now.

    ``w`` (and a stretched gate's ``log_alpha``) start in torch's default dtype, like any
    ``nn.Module``'s parameters: ``.double()`` makes a float64 layer, and sub-layers built
    later follow ``w``'s dtype and device.
    """

    blocks: nn.ModuleList
    sublayer_seed: Tensor

    def __init__(
        self,
        block: BlockFactory,
        *,
        h: str | nn.Module | Callable[[Tensor], Tensor] = "identity",
        w0: float = 1.0,
        gate: str | Gate = "exp",
        alpha: float = 1.0,
        trainable_alpha: bool = False,
        merge: str = "residual",
        grow_step: int = 5,
        w_l2: float = 0.0,
        w_penalty: str = "l2",
        block_l2: float = 0.0,
        gamma_shift: float = 0.0,
        penalised: Penalised | None = None,
        geometric_eps: float = 1e-8,
        seed: int | None = None,
        max_blocks: int | None = DEFAULT_MAX_BLOCKS,
        zero_init: bool = False,
        penalty_gate: str = "attached",
        example_input: Tensor | None = None,
    ) -> None:
        super().__init__()
        if not callable(block):
            raise InputError(f"block={block!r} is not accepted; expected a callable f(i) -> nn.Module")
        if isinstance(grow_step, bool) or not isinstance(grow_step, int) or grow_step <= 0:
            raise InputError(f"grow_step={grow_step!r} is not accepted; expected an integer >= 1")
        if not math.isfinite(w0):
            raise InputError(f"w0={w0!r} is not accepted; expected a finite number")
        for name, value in (("w_l2", w_l2), ("block_l2", block_l2)):
            if not (value >= 0 and math.isfinite(value)):
                raise InputError(f"{name}={value!r} is not accepted; expected a finite number >= 0")
        check_choice("w_penalty", w_penalty, W_PENALTIES)
        check_choice("penalty_gate", penalty_gate, PENALTY_GATES)
        self.zero_init = bool(zero_init)
        self.penalty_gate = penalty_gate
        self.factory = block
        self.h = make_h(h)
        self.gate = make_gate(gate, alpha, trainable_alpha)
        self.merge_name = merge
        self.merge = make_merge(merge, geometric_eps)
        self.grow_step = grow_step
        self.w_l2 = float(w_l2)
        self.w_penalty = w_penalty
        self.block_l2 = float(block_l2)
        self.gamma_shift = float(gamma_shift)
        self.penalised = penalised
        drawn = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else int(seed)
        self.register_buffer("sublayer_seed", torch.tensor(drawn, dtype=torch.int64))
        self.max_blocks = None if max_blocks is None else check_int("max_blocks", max_blocks, low=1)
        self.w = nn.Parameter(torch.tensor(float(w0)))
        self.blocks = nn.ModuleList()
        self._h_checked = isinstance(h, str)
        if not self._h_checked:
            probe = example_input if example_input is not None else torch.randn(16, 8)
            try:
                check_idempotent(self.h, probe)
                self._h_checked = True
            except InputError:
                raise
            except Exception:
                # h cannot take the generic probe's shape: check on the first real input.
                if example_input is not None:
                    raise
        self.grow()
        if example_input is not None and self.blocks:
            self._check_shape(0, example_input, self.blocks[0](example_input))

    # ------------------------------------------------------------------ reporting
    @property
    def depth(self) -> float:
        """The current depth ``w`` as a Python float, read from the parameter on every call.

        Nothing is cached: whoever changed ``w`` (any optimizer, fused ones included, an
        in-place write, ``load_state_dict``, a DDP broadcast), this is its value now.
        """
        return float(self.w.detach())

    @property
    def active_blocks(self) -> int:
        """Number of sub-layers that run: ``max(0, ceil(w))``, or the fixed depth after :meth:`fix_depth`."""
        frozen = self.frozen_gates
        return len(frozen) if frozen is not None else self._active(self.depth)

    @property
    def frozen_gates(self) -> Tensor | None:
        """The constant gates of a layer whose depth :meth:`fix_depth` fixed (None while ``w`` learns)."""
        return self._buffers.get("fixed_gates")

    def _active(self, w: float) -> int:
        if not math.isfinite(w):
            raise DivergenceError(f"w of {type(self).__name__} is {w}")
        return max(0, math.ceil(w))

    @property
    def built_blocks(self) -> int:
        """Number of sub-layers created so far."""
        return len(self.blocks)

    @property
    def params_per_block(self) -> int:
        """Number of trainable parameters of one sub-layer (of sub-layer 0)."""
        probe = self.blocks[0] if self.blocks else self._build(0)
        return sum(p.numel() for p in probe.parameters() if p.requires_grad)

    @property
    def used_parameters(self) -> int:
        """Trainable parameters in use: the active sub-layers' plus ``w`` (and a trainable alpha)."""
        used = sum(p.numel() for b in self.blocks[: self.active_blocks] for p in b.parameters())
        return used + self._own_parameters()

    @property
    def built_parameters(self) -> int:
        """Trainable parameters allocated: every built sub-layer's plus ``w``."""
        return sum(p.numel() for b in self.blocks for p in b.parameters()) + self._own_parameters()

    def _own_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad) - sum(
            p.numel() for p in self.blocks.parameters() if p.requires_grad
        )

    def extra_repr(self) -> str:
        active = self.active_blocks if math.isfinite(self.depth) else "?"
        return (
            f"w={self.depth:.4g}, active_blocks={active}, built_blocks={self.built_blocks}, "
            f"merge={self.merge_name!r}, grow_step={self.grow_step}"
        )

    # ------------------------------------------------------------------ growth
    def _build(self, i: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + i) % (2**63 - 1))
            module = self.factory(i)
        if not isinstance(module, nn.Module):
            raise InputError(
                f"block factory returned {type(module).__name__} for i={i}; expected an nn.Module"
            )
        module.to(device=self.w.device, dtype=self.w.dtype)
        module.train(self.training)
        if self.zero_init:
            last = last_parameterised(module)
            with torch.no_grad():
                for name in ("weight", "bias"):
                    tensor = getattr(last, name, None)
                    if isinstance(tensor, Tensor):
                        tensor.zero_()
        return module

    def grow(self, target: int | None = None) -> list[nn.Module]:
        """Create sub-layers until at least ``target`` (default ``ceil(w)``) exist, in whole chunks.

        Returns the new sub-layers; already built ones are never touched or dropped.
        """
        if target is None:
            return self._grow_to(self.active_blocks, chunked=True)
        return self._grow_to(target, chunked=False)

    def _grow_to(self, need: int, chunked: bool) -> list[nn.Module]:
        if need <= len(self.blocks):
            return []
        limit = self.max_blocks
        if limit is not None and need > limit:
            raise InputError(too_many_blocks(self, self.depth, need, limit))
        total = math.ceil(need / self.grow_step) * self.grow_step if chunked else need
        total = min(total, limit or total)
        new = [self._build(i) for i in range(len(self.blocks), total)]
        for module in new:
            self.blocks.append(module)
        record_growth()
        return new

    def _grow_unregistered(self, w: float) -> None:
        """Grow from ``forward``/``penalty`` to ``ceil(w)`` at the ``w`` they read (no second read).

        Warns once if no attached optimizer will step the new sub-layers.
        """
        from infdepth.depth.attach import warn_if_unattached  # attach imports this module

        warn_if_unattached(self, len(self.blocks), self._grow_to(self._active(w), chunked=True))

    @property
    def seed(self) -> int:
        """The seed of sub-layer initialisation, read from the ``sublayer_seed`` buffer."""
        return int(self.sublayer_seed)

    def fix_depth(self, threshold: float = 0.25) -> int:
        """Stop learning the depth: keep the active sub-layers with their gates frozen as constants.

        The last active sub-layer is kept when its gate is at least ``threshold`` (else
        dropped), so the depth is ``ceil(w)`` or ``ceil(w) - 1``; the kept sub-layers keep
        the gate values they have now, so the layer computes what it computed (up to a
        dropped last sub-layer) and trains on as a fixed-depth residual stack.  ``w`` stops
        training (``requires_grad=False``) and leaves the penalty.  The frozen gates are a
        buffer, so ``state_dict`` carries the fixed depth.  Returns the fixed depth.
        """
        check_float("threshold", threshold, low=0.0, high=1.0)
        if self.frozen_gates is not None:
            return len(self.frozen_gates)
        n = self._active(self.depth)
        gates = self.gates(n).detach() if n > 0 else self.w.detach().new_zeros(0)
        if n > 0 and float(gates[-1]) < threshold:
            gates = gates[:-1]
        self.grow(len(gates))
        self.register_buffer("fixed_gates", gates.clone())
        self.w.requires_grad_(False)
        return len(gates)

    def prune(self) -> int:
        """Drop the sub-layers beyond ``ceil(w)`` (for export); returns how many were removed."""
        keep = self.active_blocks
        removed = len(self.blocks) - keep
        if removed > 0:
            self.blocks = nn.ModuleList(list(self.blocks)[:keep])
        return max(0, removed)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        saved_seed = state_dict.get(prefix + "sublayer_seed")
        if isinstance(saved_seed, Tensor):  # first: it decides how the sub-layers below are built
            self.sublayer_seed.copy_(saved_seed)
        pattern = re.compile(re.escape(prefix) + r"blocks\.(\d+)\.")
        indices = [int(m.group(1)) for key in state_dict if (m := pattern.match(key))]
        if indices:
            self.grow(max(indices) + 1)
        frozen = state_dict.get(prefix + "fixed_gates")
        if isinstance(frozen, Tensor) and self.frozen_gates is None:  # a layer whose depth was fixed
            self.register_buffer("fixed_gates", torch.empty_like(frozen, device=self.w.device))
            self.w.requires_grad_(False)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if saved_seed is None and prefix + "sublayer_seed" in missing_keys:
            missing_keys.remove(prefix + "sublayer_seed")  # a checkpoint from before the seed was saved

    # ------------------------------------------------------------------ forward
    def _check_shape(self, i: int, x: Tensor, fx: Tensor) -> None:
        if fx.shape != x.shape:
            raise InputError(
                f"block {i} changed the shape from {tuple(x.shape)} to {tuple(fx.shape)}; "
                "every sub-layer of an InfiniteDepth layer must keep the shape of its input"
            )

    def gates(self, n: int | None = None) -> Tensor:
        """``delta_w(i)`` for ``i = 0 .. n-1`` (default: the active sub-layers)."""
        n = self.active_blocks if n is None else n
        return self.gate(self._index(n), self.w)

    def _index(self, n: int, shift: float = 0.0) -> Tensor:
        """``[0, 1, .., n-1] + shift`` in ``w``'s dtype and on its device."""
        index = torch.arange(n, dtype=self.w.dtype, device=self.w.device)
        return index + shift if shift else index

    def forward(self, x: Tensor) -> Tensor:
        # one host read of w (with the penalty, when collected): infdepth.depth.forward
        if torch.compiler.is_compiling():  # read before the call (CompiledDepth), else here
            n = forward.GIVEN_DEPTHS.get(self)
            return forward.run_graph(self, x, forward.enter_compiled(self, x) if n is None else n)
        w = forward.enter(self, x)  # None: the depth is fixed (fix_depth), its gates frozen
        if w is None:
            frozen = self.frozen_gates
            assert frozen is not None  # enter returns None for a fixed depth only
            out = forward.run_fixed(self, x, frozen)
        else:
            out = forward.run_eager(self, x, w)
        forward.record_penalty(self, w)  # after the sub-layers: the autograd order of before
        return out

    # ------------------------------------------------------------------ regularisation
    def penalty(self) -> Tensor:
        """``w`` penalty plus ``sum_i delta_w(i + eps) * l2(block i)`` over the used sub-layers.

        Sub-layers with ``i >= w`` have a zero gate, so they add nothing and get no gradient
        (:mod:`infdepth.depth.penalty`).
        """
        return penalty.layer_penalty(self)


def depth_layers(model: nn.Module) -> list[tuple[str, InfiniteDepth]]:
    """Every :class:`InfiniteDepth` inside ``model`` with its qualified name, in module order.

    As ``model.named_modules()`` would find them (a module held twice is listed once), by a
    plain walk of the children: ``fit`` calls this on every step.
    """
    found: list[tuple[str, InfiniteDepth]] = []
    seen: set[int] = set()  # this walk's own memo, as named_modules keeps

    def visit(prefix: str, module: nn.Module) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        if isinstance(module, InfiniteDepth):
            found.append((prefix, module))
        for name, child in module._modules.items():
            if child is not None:
                visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", model)
    return found


def total_penalty(model: nn.Module, layers: list[tuple[str, InfiniteDepth]] | None = None) -> Tensor | None:
    """Sum of :meth:`InfiniteDepth.penalty` over the g-infinity layers of ``model`` (None if none).

    ``layers`` (from :func:`depth_layers`) skips the module traversal in a hot loop.
    """
    layers = depth_layers(model) if layers is None else layers
    terms = [layer.penalty() for _, layer in layers]
    if len(terms) == 1:
        return terms[0]
    if not terms:
        return None
    return torch.stack(terms).sum()
