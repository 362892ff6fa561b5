"""Resolve a model spec (local directory, hub id, or ``starter``) into a sentence-transformers model.

We build on ``SentenceTransformer`` as the model container, so that what we save loads unchanged in
sentence-transformers and any pooling a saved model declares is honoured.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules.normalize import Normalize
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

from piccolo_embed.errors import ModelLoadError
from piccolo_embed.modeling.roles_io import load_role_specs
from piccolo_embed.types import Role, RolePreset, RoleSpec, RoleSpecs

log = logging.getLogger(__name__)

STARTER = "starter"
ALLOW_MISMATCH_ENV = "PICCOLO_EMBED_ALLOW_WEIGHT_MISMATCH"
# BERT's pooler: mean and CLS pooling never read it, and many checkpoints are saved without it.
_UNUSED_MISSING = ("pooler.",)
# Pretraining heads a base checkpoint may carry beside the encoder (MLM/LM/NSP): not part of an embedder.
_HEADS = ("cls.", "lm_head.", "pooler.")


def resolve_model_dir(spec: str | Path) -> Path:
    """Turn ``spec`` into a local directory, converting the starter or downloading from the hub as needed.

    Raises:
        ModelLoadError: The path does not exist, or the hub is unreachable for a hub id.
    """
    text = str(spec)
    if text == STARTER:
        from piccolo_embed.starter import ensure_starter

        return ensure_starter()
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise ModelLoadError(f"{path}: not a model directory (no config.json or modules.json)")
        return path
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ModelLoadError(f"model directory not found: {path}")
    return _download_from_hub(text)


def _download_from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id))
    except Exception as err:  # huggingface_hub raises many types for offline, missing and auth failures
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached or has no such model"
        raise ModelLoadError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({why}: {type(err).__name__}). "
            f"Offline, pass a local model directory, or 'starter' for the bundled multilingual-e5-small."
        ) from err


def load_sentence_transformer(
    model_dir: Path, *, device: str, allow_weight_mismatch: bool | None = None
) -> SentenceTransformer:
    """Load ``model_dir`` (sentence-transformers or plain Hugging Face layout), always ending in L2 normalisation.

    A plain Hugging Face checkpoint gets piccolo's head: mean pooling over the attention mask, then Normalize.

    Args:
        model_dir: The model directory.
        device: Where the weights go.
        allow_weight_mismatch: Load even when weights are missing (left random) or unexpected; ``None`` reads
            ``$PICCOLO_EMBED_ALLOW_WEIGHT_MISMATCH`` (``1`` allows).

    Raises:
        ModelLoadError: Unreadable or wrongly shaped weights, or missing/unexpected ones (each listed) unless allowed.
    """
    if allow_weight_mismatch is None:
        allow_weight_mismatch = os.environ.get(ALLOW_MISMATCH_ENV, "") not in ("", "0")
    with _load_reports() as reports:
        try:
            model = _load(model_dir, device)
        except ModelLoadError:
            raise
        except Exception as err:  # safetensors, torch and transformers raise many types for a broken file
            raise ModelLoadError(f"{model_dir}: cannot load the model's weights: {_first_line(err)}") from err
    for where, info in reports:
        _check_weights(where, info, allowed=allow_weight_mismatch)
    return model


def _load(model_dir: Path, device: str) -> SentenceTransformer:
    if (model_dir / "modules.json").is_file():
        model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
        if not any(isinstance(module, Normalize) for module in model):
            model.append(Normalize())
        return model
    transformer = Transformer(str(model_dir), model_kwargs={"local_files_only": True})
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    return SentenceTransformer(modules=[transformer, pooling, Normalize()], device=device)


@contextlib.contextmanager
def _load_reports() -> Iterator[list[tuple[str, Any]]]:
    """Collect transformers' loading info (missing/unexpected keys) of each ``from_pretrained`` inside.

    Why patch: sentence-transformers calls ``from_pretrained`` without ``output_loading_info``, and transformers
    only logs the report (which the CLI's log levels hide); its report function is the one place that sees it.
    """
    from transformers import modeling_utils

    original = getattr(modeling_utils, "log_state_dict_report", None)
    reports: list[tuple[str, Any]] = []
    if original is None:  # another transformers version: no report to check
        yield reports
        return

    def capture(**kwargs: Any) -> Any:
        reports.append((str(kwargs.get("pretrained_model_name_or_path")), kwargs.get("loading_info")))
        return original(**kwargs)

    modeling_utils.log_state_dict_report = capture
    try:
        yield reports
    finally:
        modeling_utils.log_state_dict_report = original


def _check_weights(where: str, info: Any, *, allowed: bool) -> None:
    """Refuse missing or unexpected weights (BERT's pooler, which mean pooling never reads, may be absent)."""
    missing = sorted(key for key in getattr(info, "missing_keys", ()) if not key.startswith(_UNUSED_MISSING))
    unexpected = sorted(key for key in getattr(info, "unexpected_keys", ()) if not key.startswith(_HEADS))
    if not missing and not unexpected:
        return
    listed = "; ".join(
        f"{what} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
        for what, keys in (("missing", missing), ("unexpected", unexpected))
        if keys
    )
    if allowed:
        log.warning("%s: loaded despite weights %s (missing ones are random)", where, listed)
        return
    raise ModelLoadError(
        f"{where}: the weights file does not match the model: {listed}. Missing weights would be random; "
        f"set {ALLOW_MISMATCH_ENV}=1 to load anyway"
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {' '.join(line.strip() for line in text[:3])}" if text else type(err).__name__


def resolve_roles(model_dir: Path, model: SentenceTransformer, override: RoleSpecs | RolePreset | None) -> RoleSpecs:
    """Pick role settings: an explicit override, else the model's own file, else its prompts, else piccolo's.

    Max lengths are capped at the model's own limit so a role can never ask for more positions than exist.
    """
    limit = int(model.max_seq_length or 512)
    if isinstance(override, str):
        specs = RolePreset.parse(override).specs(limit)
    elif override is not None:
        specs = dict(override)
    else:
        specs = load_role_specs(model_dir) or _roles_from_prompts(model, limit)
    return {role: RoleSpec(spec.prefix, min(spec.max_length, limit)) for role, spec in specs.items()}


def _roles_from_prompts(model: SentenceTransformer, limit: int) -> RoleSpecs:
    specs = RolePreset.PICCOLO.specs(limit)
    prompts = model.prompts or {}
    if prompts.get("query") or prompts.get("passage"):
        log.info("no piccolo_embed.json: using the model's sentence-transformers prompts for the roles")
        return {
            Role.QUERY: RoleSpec(prompts.get("query", ""), specs[Role.QUERY].max_length),
            Role.PASSAGE: RoleSpec(prompts.get("passage", prompts.get("document", "")), limit),
            Role.NONE: RoleSpec("", limit),
        }
    log.warning("model has no role settings; using piccolo's (查询：/结果：). Pass roles=... to override.")
    return specs
