"""A Mamba block (selective state-space model, Gu & Dao 2023) in plain torch, CPU and GPU.

The block follows ``mamba_ssm``'s ``Mamba`` module (state-spaces/mamba,
``mamba_ssm/modules/mamba_simple.py``): the same parameter names and shapes, so state dicts
are interchangeable with it (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``,
``out_proj``), and the same initialisation (lines 82-115 there: ``dt_proj`` weight uniform in
+-dt_rank^-0.5, its bias the inverse softplus of a step log-uniform in [dt_min, dt_max] floored
at 1e-4, ``A_log = log(1..d_state)`` per channel (S4D-real), ``D = 1``). The code is our own.

For one input ``x`` [batch, L, d_model]::

    x, z   = in_proj(x).chunk(2)                      # [batch, L, d_inner] each
    x      = SiLU(causal depthwise conv1d(x))         # kernel d_conv, left padding only
    dt, B, C = x_proj(x).split(dt_rank, d_state, d_state)
    delta  = softplus(dt_proj(dt))                    # [batch, L, d_inner], step sizes > 0
    A      = -exp(A_log)                              # [d_inner, d_state], decay rates < 0
    h_t    = exp(delta_t A) * h_{t-1} + delta_t B_t x_t   # [batch, d_inner, d_state]
    y_t    = C_t . h_t + D x_t
    out    = out_proj(y * SiLU(z))

The recurrence ``h_t = a_t h_{t-1} + b_t`` (the selective scan) is computed in one of three ways:
``"sequential"`` (the reference: one autograd step per time point over the whole [batch, L,
d_inner, d_state] state), ``"parallel"`` (default) or ``"kernel"`` (``mamba_ssm``'s fused CUDA
kernel, used by ``"auto"`` when ``mamba_ssm`` is importable and the input is on a CUDA device).
All compute the same function of the same weights.

``"parallel"`` cuts time into chunks of ``chunk`` steps; each chunk is an associative scan in
``log2(chunk)`` vectorised Hillis-Steele steps (the prefix-sum idea that the ``mambapy``
package's ``pscan`` uses in Blelloch form; our code is another scheme) started from the state
the previous chunk ended in, contracted with ``C`` at once. A custom backward recomputes each
chunk's states from the saved chunk-start states and runs the adjoint recurrence (``s_t = g_t +
a_{t+1} s_{t+1}``) backwards in time, so, as in mamba_ssm's kernel, the d_state-wide states are
never stored for the whole sequence: memory is ``O(batch L d_inner)``. Products of ``a =
exp(delta A)`` lie in (0, 1], so the scan is stable at any length (no cumulative sums of
logarithms that overflow). :func:`scan_parallel` is the same associative scan for the bare
recurrence, two-level over the whole sequence (``O(log L)`` Python steps).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:  # mamba-ssm's fused CUDA selective scan, where it is installed (CUDA machines only)
    import selective_scan_cuda  # noqa: F401 - the compiled kernel; recent mamba_ssm imports without it
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _kernel_scan
except Exception:  # noqa: BLE001 - ImportError, or a broken CUDA extension: fall back to torch
    _kernel_scan = None

SCANS = ("auto", "parallel", "sequential", "kernel")


def kernels_available() -> bool:
    """Whether ``mamba_ssm``'s CUDA selective-scan kernel imported."""
    return _kernel_scan is not None


# ------------------------------------------------------------------ h_t = a_t * h_{t-1} + b_t
def scan_sequential(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Reference linear recurrence: ``h_t = a_t * h_{t-1} + b_t`` with ``h_{-1} = 0``.

    ``a``, ``b``: [batch, L, ...] (time on dim 1, any trailing shape); returns ``h`` like ``b``.
    One Python step per time point; differentiable by autograd.
    """
    h = torch.zeros_like(b[:, 0])
    out = []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


def _hillis_steele(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """In-place inclusive scan along dim 1 of ``(a, b)`` pairs under ``(a1, b1) o (a2, b2) =
    (a1 a2, a2 b1 + b2)``: afterwards ``a[:, t]`` is the product ``a_0..a_t`` and ``b[:, t]`` is
    ``h_t``. ``ceil(log2 L)`` vectorised steps (no autograd: callers pass copies)."""
    length, shift = a.shape[1], 1
    while shift < length:
        b[:, shift:] += a[:, shift:] * b[:, :-shift]  # the product is a new tensor: no aliasing
        a[:, shift:] *= a[:, :-shift].clone()
        shift *= 2
    return a, b


def _scan_nograd(a: torch.Tensor, b: torch.Tensor, chunk: int) -> torch.Tensor:
    """``h`` of the recurrence (as :func:`scan_sequential`) by the two-level chunked scan."""
    batch, length = a.shape[:2]
    rest = a.shape[2:]
    if length <= chunk:
        return _hillis_steele(a.clone(), b.clone())[1]
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    if pad:  # identity elements (a = 1, b = 0) at the end change no earlier state
        a = torch.cat([a, a.new_ones((batch, pad, *rest))], dim=1)
        b = torch.cat([b, b.new_zeros((batch, pad, *rest))], dim=1)
    shape = (batch * n_chunks, chunk, *rest)
    decay, h = _hillis_steele(a.reshape(shape).clone(), b.reshape(shape).clone())
    decay = decay.view(batch, n_chunks, chunk, *rest)
    h = h.view(batch, n_chunks, chunk, *rest)
    # state at the end of each chunk: a scan over chunks of (chunk decay, chunk's local end state)
    carry = _scan_nograd(decay[:, :, -1], h[:, :, -1], chunk)
    h[:, 1:] += decay[:, 1:] * carry[:, :-1].unsqueeze(2)
    return h.reshape(batch, n_chunks * chunk, *rest)[:, :length]


class _LinearScan(torch.autograd.Function):
    """Autograd of the chunked scan. With ``s_t = g_t + a_{t+1} s_{t+1}`` (a scan backwards in
    time of the output gradient ``g``): ``dL/db_t = s_t`` and ``dL/da_t = s_t h_{t-1}``."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, chunk: int) -> torch.Tensor:
        h = _scan_nograd(a, b, chunk)
        ctx.save_for_backward(a, h)
        ctx.chunk = chunk
        return h

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        a, h = ctx.saved_tensors
        a_next = torch.cat([a[:, 1:], torch.ones_like(a[:, :1])], dim=1)
        s = _scan_nograd(a_next.flip(1), grad.flip(1), ctx.chunk).flip(1)
        h_prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)
        return s * h_prev, s, None


def scan_parallel(a: torch.Tensor, b: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """The recurrence of :func:`scan_sequential` (same shapes, same values up to rounding) by the
    chunked associative scan: ``O(log L)`` Python steps, differentiable (custom backward)."""
    if chunk < 2:
        raise ValueError(f"chunk must be >= 2, got {chunk}")
    return _LinearScan.apply(a, b, chunk)


# ---------------------------------------------------------------------------- selective scan
def _chunk_inputs(
    delta: torch.Tensor, u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, s: slice
) -> tuple[torch.Tensor, torch.Tensor]:
    """``a = exp(delta A)`` and ``b = delta u B`` of time steps ``s``, [batch, t, d_inner,
    d_state], from time-major ``delta``, ``u`` [batch, L, d_inner] and ``B`` [batch, L, d_state]."""
    a = torch.exp(delta[:, s, :, None] * A)
    b = (delta[:, s] * u[:, s])[..., None] * B[:, s, None, :]
    return a, b


class _SelectiveScan(torch.autograd.Function):
    """``y_t = C_t . h_t``, ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``, fused over time
    chunks (time-major inputs: ``u``, ``delta`` [batch, L, d_inner], ``B``, ``C`` [batch, L,
    d_state], ``A`` [d_inner, d_state]; ``y`` [batch, L, d_inner]).

    Each chunk of ``chunk`` steps is scanned with :func:`_hillis_steele` from the state the
    previous chunk ended in; only those chunk-start states [batch, n_chunks, d_inner, d_state]
    are kept, and the backward pass recomputes each chunk's states from them (as mamba_ssm's
    kernel does), so memory is ``O(batch L d_inner)`` plus one chunk's ``d_state``-wide states.
    """

    @staticmethod
    def forward(
        ctx: Any,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        chunk: int,
    ) -> torch.Tensor:
        batch, length, d_inner = u.shape
        h = u.new_zeros(batch, d_inner, A.shape[1])
        starts, ys = [], []
        for t0 in range(0, length, chunk):
            s = slice(t0, min(t0 + chunk, length))
            starts.append(h)
            a, b = _chunk_inputs(delta, u, A, B, s)
            decay, states = _hillis_steele(a, b)
            states += decay * h[:, None]
            ys.append((states @ C[:, s, :, None]).squeeze(-1))
            h = states[:, -1]
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(starts, 1))
        ctx.chunk = chunk
        return torch.cat(ys, 1)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        u, delta, A, B, C, starts = ctx.saved_tensors
        length, chunk = u.shape[1], ctx.chunk
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
        grad_B, grad_C = torch.empty_like(B), torch.empty_like(C)
        grad_A = torch.zeros_like(A)
        carry = torch.zeros_like(starts[:, 0])  # dL/dh at the chunk's end from later chunks
        for index in reversed(range(starts.shape[1])):
            s = slice(index * chunk, min((index + 1) * chunk, length))
            h0 = starts[:, index]
            a, b = _chunk_inputs(delta, u, A, B, s)
            decay, states = _hillis_steele(a.clone(), b)
            states += decay * h0[:, None]
            g = grad_y[:, s]
            grad_C[:, s] = (states * g[..., None]).sum(2)
            dh = g[..., None] * C[:, s, None, :]
            dh[:, -1] += carry
            # s_t = dh_t + a_{t+1} s_{t+1}: a scan backwards in time
            a_next = torch.cat([a[:, 1:], torch.ones_like(a[:, :1])], 1)
            sens = _hillis_steele(a_next.flip(1), dh.flip(1))[1].flip(1)
            carry = a[:, 0] * sens[:, 0]
            h_prev = torch.cat([h0[:, None], states[:, :-1]], 1)
            grad_log_a = sens * h_prev * a  # dL/d(delta A)
            grad_delta[:, s] = (grad_log_a * A).sum(-1)
            grad_A += (grad_log_a * delta[:, s, :, None]).sum((0, 1))
            grad_du = (sens * B[:, s, None, :]).sum(-1)  # dL/d(delta u)
            grad_delta[:, s] += grad_du * u[:, s]
            grad_u[:, s] = grad_du * delta[:, s]
            grad_B[:, s] = (sens * (delta[:, s] * u[:, s])[..., None]).sum(2)
        return grad_u, grad_delta, grad_A, grad_B, grad_C, None


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    scan: str = "parallel",
    chunk: int = 8,
) -> torch.Tensor:
    """Mamba's selective scan, with the argument layout of ``mamba_ssm``'s ``selective_scan_fn``.

    ``u``, ``delta``, ``z``: [batch, d_inner, L]; ``A``: [d_inner, d_state]; ``B``, ``C``:
    [batch, d_state, L] (input-dependent); ``D``, ``delta_bias``: [d_inner]. Returns ``y``
    [batch, d_inner, L]: ``y_t = C_t . h_t + D u_t`` times ``SiLU(z_t)`` where ``h_t =
    exp(delta_t A) h_{t-1} + delta_t B_t u_t``. ``scan``: "parallel", "sequential" or "kernel"
    (the CUDA kernel; needs ``mamba_ssm`` and CUDA tensors).
    """
    if scan == "kernel":
        if _kernel_scan is None or not u.is_cuda:
            raise RuntimeError("scan='kernel' needs mamba_ssm installed and CUDA tensors")
        return _kernel_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    delta_t, u_t = delta.transpose(1, 2), u.transpose(1, 2)  # [batch, L, d_inner]
    B_t, C_t = B.transpose(1, 2), C.transpose(1, 2)  # [batch, L, d_state]
    if scan == "parallel":
        y = _SelectiveScan.apply(u_t, delta_t, A, B_t, C_t, chunk).transpose(1, 2)
    elif scan == "sequential":
        a, b = _chunk_inputs(delta_t, u_t, A, B_t, slice(None))  # [batch, L, d_inner, d_state]
        h = scan_sequential(a, b)
        y = (h @ C_t[..., None]).squeeze(-1).transpose(1, 2)  # [batch, d_inner, L]
    else:
        raise ValueError(f"unknown scan {scan!r}; choose one of {', '.join(SCANS)}")
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y


class Mamba(nn.Module):
    """One Mamba block (no norm, no residual): [batch, L, d_model] -> [batch, L, d_model].

    Causal: output ``t`` depends on inputs ``0..t`` only. ``expand`` sets ``d_inner = expand x
    d_model``, ``dt_rank="auto"`` is ``ceil(d_model / 16)``; defaults as ``mamba_ssm`` (d_state
    16, d_conv 4, expand 2). ``scan``: "auto" (the CUDA kernel where importable and the input is
    on CUDA, else "parallel"), "parallel", "sequential" or "kernel"; an attribute, so it can be
    switched on a built model without touching the weights.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        scan: str = "auto",
        chunk: int = 8,
    ) -> None:
        super().__init__()
        if scan not in SCANS:
            raise ValueError(f"unknown scan {scan!r}; choose one of {', '.join(SCANS)}")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan, self.chunk = scan, chunk
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=conv_bias,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(
            torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        with torch.no_grad():  # softplus(bias) = dt
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))  # S4D-real: A = -(1..d_state) per channel
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def resolved_scan(self, x: torch.Tensor) -> str:
        """The scan ``forward`` uses for input ``x`` ("auto" resolved)."""
        if self.scan != "auto":
            return self.scan
        return "kernel" if _kernel_scan is not None and x.is_cuda else "parallel"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [batch, L, d_model] -> [batch, L, d_model]."""
        length = x.shape[1]
        xz = self.in_proj(x).transpose(1, 2)  # [batch, 2 d_inner, L]
        u, z = xz.chunk(2, dim=1)
        u = F.silu(self.conv1d(u)[..., :length])  # causal: drop the right padding
        dt, B, C = self.x_proj(u.transpose(1, 2)).split(
            [self.dt_rank, self.d_state, self.d_state], dim=-1
        )
        delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # bias added in the scan
        fp = torch.float64 if x.dtype == torch.float64 else torch.float32  # A, D, bias: >= fp32
        y = selective_scan(
            u,
            delta,
            -torch.exp(self.A_log.to(fp)),
            B.transpose(1, 2).contiguous(),
            C.transpose(1, 2).contiguous(),
            self.D.to(fp),
            z=z,
            delta_bias=self.dt_proj.bias.to(fp),
            delta_softplus=True,
            scan=self.resolved_scan(x),
            chunk=self.chunk,
        )
        return self.out_proj(y.transpose(1, 2))


def mamba_parameter_count(
    d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | None = None
) -> int:
    """Parameters of one :class:`Mamba` block (default biases: none on the projections, conv
    and ``dt_proj`` biased), without building it."""
    d_inner = expand * d_model
    rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
    return (
        d_model * 2 * d_inner  # in_proj
        + d_inner * d_conv
        + d_inner  # conv1d
        + d_inner * (rank + 2 * d_state)  # x_proj
        + rank * d_inner
        + d_inner  # dt_proj
        + d_inner * d_state
        + d_inner  # A_log, D
        + d_inner * d_model  # out_proj
    )
