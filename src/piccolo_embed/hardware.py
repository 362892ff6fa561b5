"""What this machine's devices do fast, probed on first use so that importing stays light."""

from __future__ import annotations


def cpu_has_amx() -> bool:
    """True when torch reports AMX tiles on this CPU, the case in which CPU bf16 is fast."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, so guard for other torch versions
    return bool(probe is not None and probe())


def bf16_is_fast(device_type: str) -> bool:
    """Whether ``device_type`` (``"cuda"`` or ``"cpu"``) runs bf16 at speed: a GPU with bf16 support, an AMX CPU."""
    if device_type == "cuda":
        import torch

        return torch.cuda.is_bf16_supported()
    return cpu_has_amx()
