"""Loading and saving STream3R weights: local files / folders and the Hugging Face Hub.

Accepted sources for :func:`load_pretrained` (``STream3R.from_pretrained``):

* a folder with ``model.safetensors`` (or ``pytorch_model.bin`` / ``model.pt`` / ``model.pth`` /
  ``checkpoint.pt``) and optionally ``config.json`` (what :func:`save_pretrained` writes and what the
  official Hub repo holds);
* a single weights file: ``.safetensors``, or a torch pickle (``.pt``, ``.pth``, ``.bin``,
  ``.ckpt``) holding a state dict, possibly wrapped as ``{"model": ...}`` / ``{"state_dict": ...}``
  and with key prefixes such as ``net.``, ``model.``, ``module.`` (training checkpoints); a
  ``config.json`` next to the file is used when present;
* a Hub repo id (default ``yslan/STream3R``), downloaded with ``huggingface_hub`` with a short
  timeout.  With ``HF_HUB_OFFLINE=1`` only the local Hub cache is tried and a miss fails at once.

Keys and shapes must match the model exactly (``strict``); a mismatch raises
:class:`CheckpointError` naming the missing / unexpected keys and the mismatched shapes.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Type, Union

import torch
from torch import Tensor

from .config import STream3RConfig

log = logging.getLogger(__name__)

DEFAULT_REPO = "yslan/STream3R"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth", "checkpoint.pt")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
KEY_PREFIXES = ("module.", "net.", "model.", "_orig_mod.")
WRAPPER_KEYS = ("model", "state_dict", "module", "net", "model_state_dict")
HUB_TIMEOUT_S = 10.0

HUB_PROBE_TIMEOUT_S = 3.0

HOW_TO_PASS_LOCAL = (
    "pass a local file or folder instead, e.g. STream3R.from_pretrained('/path/to/model.safetensors') "
    "(or a folder holding model.safetensors and config.json); download it on a machine with internet "
    "access with `hf download {repo} model.safetensors config.json --local-dir STream3R` and copy the folder over"
)


class CheckpointError(ValueError):
    """A checkpoint does not match the model (missing / unexpected keys, shapes) or cannot be read."""


class WeightsUnavailable(OSError):
    """Hub weights are neither cached nor downloadable; ``reason`` is the short cause, the message adds
    what to do."""

    def __init__(self, repo_id: str, reason: str) -> None:
        super().__init__(f"{reason}; " + HOW_TO_PASS_LOCAL.format(repo=repo_id))
        self.repo_id = repo_id
        self.reason = reason


# ---------------------------------------------------------------------------------------- reading
def read_state_dict(path: Union[str, Path]) -> Dict[str, Tensor]:
    """Tensors of a weights file (on CPU), unwrapped from ``{"model": ...}``-style containers."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - corrupt / not safetensors: one CheckpointError naming the file
            raise CheckpointError(f"cannot read safetensors file {path}: {e}") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling raises many types: one CheckpointError naming the file
        raise CheckpointError(f"cannot read torch checkpoint {path} (weights_only load): {e}") from None
    return unwrap_state_dict(obj, str(path))


def unwrap_state_dict(obj: Any, where: str = "checkpoint") -> Dict[str, Tensor]:
    """Find the state dict inside common wrappers and keep its tensor entries."""
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where}: expected a state dict, found {type(obj).__name__}")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not sd:
        raise CheckpointError(f"{where}: no tensors found (keys: {list(obj)[:10]})")
    return sd


def strip_prefixes(state_dict: Mapping[str, Tensor], expected: Any) -> Dict[str, Tensor]:
    """Remove training prefixes (``net.``, ``model.``, ``module.``, ``_orig_mod.``) from keys that
    do not match ``expected`` as they are."""
    out: Dict[str, Tensor] = {}
    for key, val in state_dict.items():
        k = key
        while k not in expected:
            pre = next((p for p in KEY_PREFIXES if k.startswith(p)), None)
            if pre is None:
                k = key  # nothing matched: keep the original name for the error message
                break
            k = k[len(pre):]
        if k in out:
            raise CheckpointError(f"checkpoint keys collide after removing prefixes: {key!r} -> {k!r}")
        out[k] = val
    return out


def check_state_dict(state_dict: Mapping[str, Tensor], expected: Mapping[str, torch.Size], where: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless keys and shapes match ``expected`` exactly."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [(k, tuple(state_dict[k].shape), tuple(expected[k])) for k in expected
              if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])]
    if not (missing or unexpected or shapes):
        return

    def show(keys: list, n: int = 12) -> str:
        more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
        return ", ".join(keys[:n]) + more

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {show(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {show(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches: " + show(
            [f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in shapes], 8))
    raise CheckpointError(f"{where} does not match the model ({'; '.join(parts)}). "
                          "Is the model config (config.json / config_overrides) the checkpoint's?")


# ---------------------------------------------------------------------------------------- locating
def _hub_offline() -> bool:
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except (ImportError, AttributeError):  # pragma: no cover
        return False


def _looks_like_repo_id(name: str) -> bool:
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") != 1:
        return False
    if Path(name).suffix in (".safetensors",) + TORCH_SUFFIXES:
        return False
    owner, repo = name.split("/")
    return bool(owner) and bool(repo)


def _hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> Optional[str]:
    """Why the Hub's endpoint cannot be reached (None when a TCP connection opens, or when a proxy is
    configured and only the download itself can tell). One quick attempt, no retries: without network
    ``hf_hub_download`` would retry for about half a minute before failing."""
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except (ImportError, AttributeError):  # pragma: no cover
        endpoint = "https://huggingface.co"
    url = urlsplit(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"the Hugging Face Hub ({host}:{port}) cannot be reached: {e.strerror or e}"


def hub_files(repo_id: str, revision: Optional[str] = None, timeout: float = HUB_TIMEOUT_S,
              cache_dir: Union[str, Path, None] = None) -> Tuple[Optional[Path], Path]:
    """(config.json or None, model.safetensors) of a Hub repo: local cache first, then the network
    (unless offline, or the Hub cannot be reached: then it fails at once, without retries).

    Raises:
        WeightsUnavailable: the files cannot be had (the message says what to do).
    """
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover
        raise WeightsUnavailable(repo_id, f"huggingface_hub is not installed, cannot fetch {repo_id!r}") from None

    def get(filename: str, local_only: bool) -> Optional[Path]:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=local_only,
                                        etag_timeout=timeout, cache_dir=cache_dir))
        except Exception as e:  # not cached / not found / network
            if local_only:
                return None
            raise e

    weights = get("model.safetensors", True)
    if weights is not None:
        return get("config.json", True), weights
    if _hub_offline():
        raise WeightsUnavailable(repo_id, f"STream3R weights {repo_id!r} are not in the local Hugging Face cache "
                                          f"and the hub is offline (HF_HUB_OFFLINE=1)")
    unreachable = _hub_unreachable()
    if unreachable:
        raise WeightsUnavailable(repo_id, f"STream3R weights {repo_id!r} are not in the local Hugging Face cache "
                                          f"and {unreachable}")
    try:
        weights = get("model.safetensors", False)
        try:
            config = get("config.json", False)
        except Exception:  # noqa: BLE001 - hub errors of many types: no config.json means the defaults
            config = None
    except Exception as e:  # noqa: BLE001 - network / hub errors of many types: one WeightsUnavailable
        raise WeightsUnavailable(repo_id, f"could not download STream3R weights {repo_id!r} from the Hugging Face "
                                          f"Hub ({type(e).__name__}: {e})") from None
    return config, weights


def resolve(name_or_path: Union[str, Path], revision: Optional[str] = None,
            cache_dir: Union[str, Path, None] = None) -> Tuple[Optional[Path], Path]:
    """(config.json or None, weights file) for a folder, a file or a Hub repo id."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        weights = next((p / f for f in WEIGHT_FILES if (p / f).is_file()), None)
        if weights is None:
            cands = sorted(list(p.glob("*.safetensors")) + [q for s in TORCH_SUFFIXES for q in p.glob("*" + s)])
            if len(cands) != 1:
                raise FileNotFoundError(f"no STream3R weights in folder {p} (looked for {', '.join(WEIGHT_FILES)})")
            weights = cands[0]
        cfg = p / "config.json"
        return (cfg if cfg.is_file() else None), weights
    if p.is_file():
        cfg = p.parent / "config.json"
        return (cfg if cfg.is_file() else None), p
    name = str(name_or_path)
    if _looks_like_repo_id(name):
        return hub_files(name, revision, cache_dir=cache_dir)
    raise FileNotFoundError(f"STream3R checkpoint {name!r} not found (neither a file, a folder nor a Hub repo id 'owner/name')")


# ---------------------------------------------------------------------------------------- api
def load_pretrained(cls: Type, name_or_path: Union[str, Path] = DEFAULT_REPO,
                    config_overrides: Optional[Mapping[str, Any]] = None,
                    device: Union[str, torch.device, None] = None, dtype: Optional[torch.dtype] = None,
                    revision: Optional[str] = None, config: Optional[Mapping[str, Any]] = None,
                    cache_dir: Union[str, Path, None] = None) -> Any:
    """Build ``cls`` from a checkpoint (strict): see the module docstring.

    Args:
        name_or_path: folder, file or Hub repo id.
        config_overrides: config fields that replace those of config.json (or of the defaults).
        device, dtype: where / in which dtype to put the weights (default CPU, the file's dtype).
        revision, cache_dir: Hub revision and cache folder.
        config: use this config instead of any config.json.
    """
    cfg_path, weights = resolve(name_or_path, revision, cache_dir)
    if config is not None:
        cfg_dict = dict(config)
    elif cfg_path is not None:
        try:
            cfg_dict = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {cfg_path}: {e}") from None
    else:
        cfg_dict = {}
    cfg = STream3RConfig.from_dict(cfg_dict, config_overrides, strict=config is not None)
    sd = read_state_dict(weights)
    with torch.device("meta"):
        model = cls(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    sd = strip_prefixes(sd, expected)
    check_state_dict(sd, expected, where=f"checkpoint {weights}")
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    model.aggregator.reset_buffers(device="cpu")
    if device is not None:
        model.to(device)
    log.info("loaded STream3R weights from %s", weights)
    return model.eval()


def save_pretrained(model: Any, directory: Union[str, Path]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created); returns it."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = directory / "model.safetensors.tmp"
    save_file(sd, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / "model.safetensors")
    (directory / "config.json").write_text(model.config.to_json() + "\n")
    return directory
