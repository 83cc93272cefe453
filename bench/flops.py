"""FLOP accounting: the machine's measured matmul peak and a GPT's training FLOPs per token."""

from __future__ import annotations

import time

import torch

MATMUL_SIZES = (512, 1024, 2048)


def matmul_flops(
    n: int, dtype: torch.dtype = torch.float32, device: str = "cpu", reps: int = 5, min_time_s: float = 0.2
) -> list[float]:
    """Achieved FLOP/s of an n x n @ n x n matmul (2 n^3 FLOPs), one sample per rep after a warmup.

    Each sample loops enough matmuls to last `min_time_s`, so short sizes are not dominated by timer noise.
    """
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    out = torch.empty(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    torch.mm(a, b, out=out)  # warmup (allocations, MKL/cuBLAS kernel choice)
    sync()
    t0 = time.perf_counter()
    torch.mm(a, b, out=out)
    sync()
    one = max(time.perf_counter() - t0, 1e-6)
    inner = max(1, int(min_time_s / one))
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=out)
        sync()
        samples.append(2 * n**3 * inner / (time.perf_counter() - t0))
    return samples


def matmul_peak(sizes=MATMUL_SIZES, dtype: torch.dtype = torch.float32, device: str = "cpu", reps: int = 5) -> dict:
    """The best achieved matmul FLOP/s over a few square sizes: the machine's practical peak for this dtype."""
    per_size = {str(n): matmul_flops(n, dtype, device, reps) for n in sizes}
    best = max(max(v) for v in per_size.values())
    return {
        "peak_flops": best,
        "samples": per_size,
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "device": device,
    }


def gpt_flop_params(model: torch.nn.Module) -> int:
    """N for the 6·N rule, LM head included: every parameter once (a tied LM head counts once, as the
    head's matmul; the input-embedding lookup costs no FLOPs), minus the position embeddings (a lookup)."""
    seen, total = set(), 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        if "wpe" in name or "position_embeddings" in name:
            continue
        total += p.numel()
    # An untied head also holds the input embedding (a lookup, no FLOPs): count only one of the two.
    emb = getattr(getattr(model, "transformer", None), "wte", None)
    head = getattr(model, "lm_head", None)
    if emb is not None and head is not None and emb.weight is not head.weight:
        total -= emb.weight.numel()
    return total


def attention_flops_per_token(n_layer: int, n_embd: int, seq_len: int) -> int:
    """Training FLOPs per token of the attention score/value matmuls (not in 6·N): 12·L·T·d (PaLM appendix B,
    counting the full T×T matrix as the kernels compute it)."""
    return 12 * n_layer * seq_len * n_embd
