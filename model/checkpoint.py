"""Checkpoints of the head network: the project's own format and MonoNPHM's released layout.

Project format (``save_checkpoint`` / ``load_checkpoint``): a ``torch.save`` dict holding only tensors
and plain types, so it loads with ``torch.load(weights_only=True)``::

    {"format": "nphm-track.head", "format_version": 1, "config": HeadConfig.to_dict(),
     "state_dict": {name: tensor}, "codes": {name: tensor}, "meta": {plain types}}

Official MonoNPHM layout (``load_official_mononphm``): ``checkpoint_epoch_*.tar`` as written by
``Trainer.save_checkpoint`` in ``src/mononphm/models/training.py`` of github.com/SimonGiebenhain/MonoNPHM:
``{"epoch", "id_decoder", "ex_decoder", "optimizer", "latent_codes", "latent_codes_val", ...}`` where
``id_decoder`` is the state dict of ``NPHM`` (``models/canonical_space.py``), ``ex_decoder`` that of
``DeformationNetwork`` (``models/deformations.py``) and ``latent_codes`` that of ``LatentCodes``
(``models/base.py``). The mean anchor layout is not in the checkpoint: MonoNPHM reads it from
``assets/anchors_65.npy`` of its repository, which the caller passes in.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from model.config import HeadConfig, preset
from model.errors import InputError
from model.head import HeadLayer

FORMAT = "nphm-track.head"
FORMAT_VERSION = 1

PathLike = Union[str, os.PathLike]


def _check_plain(value: Any, where: str) -> None:
    """Refuse anything ``torch.load(weights_only=True)`` could not read back."""
    if value is None or isinstance(value, (str, int, float, bool, Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InputError(f"{where}: dict keys must be str, got {type(k).__name__}")
            _check_plain(v, f"{where}.{k}")
        return
    raise InputError(f"{where}: only tensors and plain types can be stored, got {type(value).__name__}")


def save_checkpoint(path: PathLike, layer: HeadLayer, codes: Optional[dict[str, Tensor]] = None,
                    meta: Optional[dict[str, Any]] = None) -> Path:
    """Write ``layer`` (config + weights), optional codes and plain-type ``meta`` to ``path`` atomically
    (written to a temporary name in the same folder, then renamed). Returns the path."""
    path = Path(path)
    codes = dict(codes or {})
    meta = dict(meta or {})
    for name, value in codes.items():
        if not isinstance(value, Tensor):
            raise InputError(f"codes[{name!r}]: expected a tensor, got {type(value).__name__}")
    _check_plain(meta, "meta")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": layer.cfg.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in layer.state_dict().items()},
        "codes": {k: v.detach().cpu().clone() for k, v in codes.items()},
        "meta": meta,
    }
    return atomic_save(payload, path)


def atomic_save(payload: dict[str, Any], path: Path) -> Path:
    """``torch.save`` to a temporary name beside ``path``, renamed on success (no partial file is left)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _safe_load(path: PathLike) -> Any:
    """``torch.load(weights_only=True)`` on CPU with one-line :class:`InputError` messages."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: refused: the checkpoint needs unpickling arbitrary Python objects "
                         f"({first[:200]})") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable torch checkpoint ({str(e).splitlines()[0][:200]})") from e


def load_checkpoint(path: PathLike) -> tuple[HeadLayer, dict[str, Tensor], dict[str, Any]]:
    """Read a project checkpoint: ``(layer, codes, meta)``. The layer is in eval mode, float32 on CPU.

    Refuses (with :class:`InputError` naming the file) files that need unpickling arbitrary objects,
    other formats, unknown ``format_version`` values and state dicts that do not match the config.
    """
    payload = _safe_load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path}: not an nphm-track head checkpoint (no format {FORMAT!r})")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(f"{path}: unsupported format_version {version!r} (this version reads {FORMAT_VERSION})")
    cfg_dict = payload.get("config")
    if not isinstance(cfg_dict, dict):
        raise InputError(f"{path}: missing config")
    layer = HeadLayer(HeadConfig.from_dict(cfg_dict, source=str(path)))
    load_state_strict(layer, payload.get("state_dict") or {}, str(path))
    codes = payload.get("codes") or {}
    meta = payload.get("meta") or {}
    return layer.eval(), dict(codes), dict(meta)


# --- MonoNPHM's released layout ------------------------------------------------------------------------

def _ensemble_keys(prefix: str, n_types: int, n_linear: int) -> list[tuple[int, int, str]]:
    """(type, linear index, official key stem) of an ``EnsembleDeepSDF``: Linear layers sit at even
    indices of ``MLPDeepSDF.layers`` (activations in between)."""
    return [(t, i, f"{prefix}.layers.{t}.layers.{2 * i}") for t in range(n_types) for i in range(n_linear)]


def official_state_dicts(layer: HeadLayer, clone: bool = True) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The ``(id_decoder, ex_decoder)`` state dicts of MonoNPHM holding this layer's weights (views into
    the layer's parameters unless ``clone``)."""
    cfg = layer.cfg
    own = layer.state_dict()
    id_sd: dict[str, Tensor] = {}
    for i in (0, 2, 4):
        for p in ("weight", "bias"):
            id_sd[f"mlp_pos.{i}.{p}"] = own[f"anchor_offsets.{i}.{p}"]
    for t, i, stem in _ensemble_keys("deepSDFensemble", cfg.n_members, cfg.sdf_layers + 1):
        for p in ("weight", "bias"):
            id_sd[f"{stem}.{p}"] = own[f"sdf_ensemble.{p}.{i}"][t]
    if cfg.appearance:
        for j, name in ((0, "communcation_bottleneck1"), (2, "communcation_bottleneck2")):
            for p in ("weight", "bias"):
                id_sd[f"{name}.{p}"] = own[f"app_bottleneck.{j}.{p}"]
        for t, i, stem in _ensemble_keys("aggr_app", cfg.n_members, cfg.app_layers + 1):
            for p in ("weight", "bias"):
                id_sd[f"{stem}.{p}"] = own[f"app_ensemble.{p}.{i}"][t]
    ex_sd: dict[str, Tensor] = {}
    for p in ("weight", "bias"):
        ex_sd[f"compressor.0.{p}"] = own[f"deformation.compressor.{p}"]
        for i in range(cfg.deform_layers + 1):
            ex_sd[f"defDeepSDF.lin{i}.{p}"] = own[f"deformation.layers.{i}.{p}"]
    if not clone:
        return id_sd, ex_sd
    return ({k: v.clone() for k, v in id_sd.items()}, {k: v.clone() for k, v in ex_sd.items()})


def _from_official(probe: HeadLayer, id_sd: dict[str, Tensor], ex_sd: dict[str, Tensor],
                   source: str) -> dict[str, Tensor]:
    """Inverse of :func:`official_state_dicts` for ``probe``'s config (keeping its anchor mean); key and
    shape mismatches are listed in an :class:`InputError`."""
    cfg = probe.cfg
    want_id, want_ex = official_state_dicts(probe, clone=False)
    for name, got, want in (("id_decoder", id_sd, want_id), ("ex_decoder", ex_sd, want_ex)):
        check_state_dict(want, got, f"{source}: {name}", "MonoNPHM's layout")
    own: dict[str, Tensor] = {"anchor_mean": probe.anchor_mean.clone()}
    for i in (0, 2, 4):
        for p in ("weight", "bias"):
            own[f"anchor_offsets.{i}.{p}"] = id_sd[f"mlp_pos.{i}.{p}"]
    for p in ("weight", "bias"):
        for i in range(cfg.sdf_layers + 1):
            own[f"sdf_ensemble.{p}.{i}"] = torch.stack(
                [id_sd[f"deepSDFensemble.layers.{t}.layers.{2 * i}.{p}"] for t in range(cfg.n_members)])
        if cfg.appearance:
            own[f"app_bottleneck.0.{p}"] = id_sd[f"communcation_bottleneck1.{p}"]
            own[f"app_bottleneck.2.{p}"] = id_sd[f"communcation_bottleneck2.{p}"]
            for i in range(cfg.app_layers + 1):
                own[f"app_ensemble.{p}.{i}"] = torch.stack(
                    [id_sd[f"aggr_app.layers.{t}.layers.{2 * i}.{p}"] for t in range(cfg.n_members)])
        own[f"deformation.compressor.{p}"] = ex_sd[f"compressor.0.{p}"]
        for i in range(cfg.deform_layers + 1):
            own[f"deformation.layers.{i}.{p}"] = ex_sd[f"defDeepSDF.lin{i}.{p}"]
    return {k: v.float() for k, v in own.items()}


def _official_codes(latent: Any, suffix: str, source: str) -> dict[str, Tensor]:
    """Codes of a ``LatentCodes`` state dict, renormalised to norm <= 1 per row as MonoNPHM's
    ``nn.Embedding(max_norm=1.0)`` does on every lookup."""
    if not isinstance(latent, dict):
        raise InputError(f"{source}: latent codes{suffix} is not a state dict")
    names = {"geo": "z_id", "exp": "z_ex", "app": "z_app"}
    want = {f"codebook.{m}.embedding.weight": n for m, n in names.items()}
    unknown = sorted(set(latent) - set(want))
    missing = sorted(k for k in want if k not in latent and not k.startswith("codebook.app"))
    if unknown or missing:
        raise InputError(f"{source}: latent_codes{suffix} does not match MonoNPHM's layout; missing keys: "
                         f"{', '.join(missing) or '-'}; unknown keys: {', '.join(unknown) or '-'}")
    out = {}
    for key, name in want.items():
        if key in latent:
            w = latent[key].float()
            scale = torch.clamp(1.0 / (w.norm(dim=-1, keepdim=True) + 1e-7), max=1.0)
            out[name + suffix] = w * scale
    return out


ANCHOR_FILE = "anchors_65.npy"


def load_official_mononphm(path: PathLike, anchor_mean: Union[PathLike, Tensor, np.ndarray, None] = None
                           ) -> tuple[HeadLayer, dict[str, Tensor]]:
    """Load a released MonoNPHM ``checkpoint_epoch_*.tar`` into a ``mononphm``-preset layer.

    Args:
        path: the checkpoint (read with ``torch.load(weights_only=True)``).
        anchor_mean: MonoNPHM's mean anchor layout ``[65, 3]`` (``assets/anchors_65.npy`` of its
            repository), as a path to that ``.npy`` file or an array; used as is (not symmetrised).
            ``None`` looks for ``anchors_65.npy`` next to the checkpoint, then in its parent folder.
    Returns:
        ``(layer, codes)``: codes ``z_id [n_id, 2176]``, ``z_ex [n_ex, 100]``, ``z_app [n_id, 2176]`` from
        ``latent_codes`` and the same names with suffix ``_val`` from ``latent_codes_val`` when present.
        Checkpoint entries besides ``id_decoder``, ``ex_decoder`` and the latent codes (epoch, optimiser
        states) are ignored. Unknown or missing state-dict keys raise :class:`InputError` listing them.
    """
    cfg = preset("mononphm")
    payload = _safe_load(path)
    if not isinstance(payload, dict):
        raise InputError(f"{path}: not a MonoNPHM checkpoint (expected a dict)")
    absent = [k for k in ("id_decoder", "ex_decoder") if k not in payload]
    if absent:
        raise InputError(f"{path}: not a MonoNPHM checkpoint; missing entries: {', '.join(absent)}")
    if anchor_mean is None:
        here = Path(path).resolve().parent
        found = [p for p in (here / ANCHOR_FILE, here.parent / ANCHOR_FILE) if p.is_file()]
        if not found:
            raise InputError(f"{path}: MonoNPHM keeps its mean anchor layout outside the checkpoint; pass "
                             f"anchor_mean (assets/{ANCHOR_FILE} of the MonoNPHM repository) or put {ANCHOR_FILE} "
                             f"next to the checkpoint")
        anchor_mean = found[0]
    if isinstance(anchor_mean, (str, os.PathLike)):
        try:
            anchor_mean = np.load(anchor_mean, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"{anchor_mean}: cannot read the anchor layout ({e})") from e
    anchors = torch.as_tensor(np.asarray(anchor_mean), dtype=torch.float32)
    layer = HeadLayer(cfg)
    state = _from_official(layer, payload["id_decoder"], payload["ex_decoder"], str(path))
    load_state_strict(layer, state, str(path))
    layer.set_anchor_mean(anchors, symmetrize=False)
    codes: dict[str, Tensor] = {}
    for entry, suffix in (("latent_codes", ""), ("latent_codes_val", "_val")):
        if entry in payload:
            codes.update(_official_codes(payload[entry], suffix, str(path)))
    return layer.eval(), codes


# --- generic helpers for other project modules (encoders, regressor) -----------------------------------

def save_module_checkpoint(path: PathLike, module: torch.nn.Module, config: dict[str, Any], fmt: str,
                           format_version: int, meta: Optional[dict[str, Any]] = None) -> Path:
    """Write any module in the project layout, atomically, readable with ``torch.load(weights_only=True)``::

        {"format": fmt, "format_version": format_version, "config": config,
         "state_dict": {name: tensor}, "meta": {plain types}}

    ``config`` (the module's resolved config as a plain dict) and ``meta`` may hold only plain types.
    """
    path = Path(path)
    _check_plain(config, "config")
    meta = dict(meta or {})
    _check_plain(meta, "meta")
    payload = {"format": fmt, "format_version": int(format_version), "config": dict(config),
               "state_dict": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
               "meta": meta}
    return atomic_save(payload, path)


def half_precision_copy(src: PathLike, dst: PathLike) -> Path:
    """Write ``src`` (any project checkpoint: head, encoder, regressor) to ``dst`` with its floating-point
    weights stored as float16, halving the file (the shipped weights' 40 MB budget). Loading casts them back
    to the module's float32 (``load_state_dict`` copies across dtypes); the meta records
    ``stored_dtype: "float16"``. Measured effect on accuracy: see the weights' cards."""
    payload = _safe_load(src)
    if not isinstance(payload, dict) or "state_dict" not in payload or "format" not in payload:
        raise InputError(f"{src}: not an nphm-track checkpoint (no format / state_dict)")
    payload = dict(payload)
    payload["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    payload["meta"] = {**dict(payload.get("meta") or {}), "stored_dtype": "float16"}
    return atomic_save(payload, Path(dst))


def load_module_payload(path: PathLike, fmt: str, format_version: int) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_module_checkpoint` (``weights_only=True``) and check its
    format name, version and config; returns the payload dict."""
    payload = _safe_load(path)
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        found = payload.get("format") if isinstance(payload, dict) else None
        raise InputError(f"{path}: not an {fmt} checkpoint (format {found!r})")
    version = payload.get("format_version")
    if version != format_version:
        raise InputError(f"{path}: unsupported format_version {version!r} (this version reads {format_version})")
    if not isinstance(payload.get("config"), dict):
        raise InputError(f"{path}: missing config")
    return payload


def load_module_checkpoint(path: PathLike, fmt: str, format_version: int, config_cls: Any, module_cls: Any,
                           what: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(module_cls(config_cls(**config)) in eval mode with float32 weights, meta)`` of a checkpoint written by
    :func:`save_module_checkpoint`; :class:`InputError` naming ``path`` and ``what`` for another file."""
    payload = load_module_payload(path, fmt, format_version)
    try:
        cfg = config_cls(**payload["config"])
    except TypeError as exc:
        raise InputError(f"{path}: bad {what} config ({exc})") from None
    module = module_cls(cfg)
    load_state_strict(module, {k: v.float() for k, v in payload["state_dict"].items()}, str(path))
    return module.eval(), dict(payload.get("meta") or {})


def load_state_strict(module: torch.nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load ``state`` into ``module``, listing missing / unknown keys and wrong shapes in an :class:`InputError`."""
    check_state_dict(module.state_dict(), state, f"{source}: state dict", f"the {type(module).__name__}")
    module.load_state_dict(state)


def check_state_dict(want: dict[str, Tensor], got: dict[str, Tensor], what: str, layout: str) -> None:
    """Raise :class:`InputError` listing missing / unknown keys, then wrong shapes, of ``got`` against ``want``."""
    missing = sorted(set(want) - set(got))
    unknown = sorted(set(got) - set(want))
    if missing or unknown:
        raise InputError(f"{what} does not match {layout}; missing keys: "
                         f"{', '.join(missing) or '-'}; unknown keys: {', '.join(unknown) or '-'}")
    bad = [f"{k} {tuple(got[k].shape)} (expected {tuple(v.shape)})" for k, v in want.items()
           if not isinstance(got[k], Tensor) or got[k].shape != v.shape]
    if bad:
        raise InputError(f"{what} has wrong tensor shapes: {', '.join(bad)}")


WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def default_weights(name: str = "head_default", suffix: str = ".pt") -> Path:
    """Path of a weights file or asset shipped in ``model/weights/`` (``<name><suffix>``); the one place assets
    resolve.

    Raises :class:`InputError` when the file is not there (e.g. a stage whose weights are not trained yet).
    """
    path = WEIGHTS_DIR / f"{name}{suffix}"
    if not path.is_file():
        have = sorted(p.name for p in WEIGHTS_DIR.glob(f"*{suffix}")) if WEIGHTS_DIR.is_dir() else []
        raise InputError(f"{path}: no such weights file; shipped: {', '.join(have) or 'none'}")
    return path


def head_asset(head_path: PathLike | None, shipped_name: str, beside_suffix: str) -> Optional[Path]:
    """The file of an asset that belongs to a head checkpoint: ``model/weights/<shipped_name>.pt`` for the
    shipped head (``None`` or its path), ``<head stem><beside_suffix>`` beside another head; ``None`` when
    that file is not there."""
    shipped = WEIGHTS_DIR / "head_default.pt"
    if head_path is None or Path(head_path).resolve() == shipped.resolve():
        path = WEIGHTS_DIR / f"{shipped_name}.pt"
    else:
        path = Path(head_path).with_suffix(beside_suffix)
    return path if path.is_file() else None
