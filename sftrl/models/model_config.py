"""Architecture of a Llama-family decoder, and its translation to and from Hugging Face config.json.

One dataclass covers Llama 3 (GQA, llama3 RoPE scaling), Mistral-NeMo (explicit head_dim that is
not hidden/heads, optional sliding window) and Qwen3 (per-head q/k RMSNorm, tied embeddings).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "llama3")


class ModelConfigError(ValueError):
    """A model architecture that is inconsistent, or a config.json sftrl cannot represent."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 style frequency scaling (the only scaling the paper's models use)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the shapes and the maths of the decoder (not its dtype or sharding)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-5
    qk_norm: bool = False
    tie_embeddings: bool = False
    max_position_embeddings: int = 8192
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelConfigError(
                f"model_type {self.model_type!r} is not supported; expected one of "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ModelConfigError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ModelConfigError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            raise ModelConfigError("rope_theta and rms_norm_eps must be positive")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ModelConfigError(f"sliding_window must be positive, got {self.sliding_window}")

    @property
    def num_groups(self) -> int:
        """Query heads per kv head."""
        return self.num_heads // self.num_kv_heads

    def num_params(self) -> int:
        e, d = self.hidden_size, self.head_dim
        attn = e * d * (2 * self.num_heads + 2 * self.num_kv_heads)
        mlp = 3 * e * self.intermediate_size
        norms = 2 * e + (2 * d if self.qk_norm else 0)
        head = 0 if self.tie_embeddings else self.vocab_size * e
        return self.num_layers * (attn + mlp + norms) + self.vocab_size * e + e + head

    def rope_inv_freq(self) -> np.ndarray:
        """Inverse frequencies [head_dim/2] in float32, computed as transformers does."""
        exponents = np.arange(0, self.head_dim, 2, dtype=np.int64).astype(np.float32)
        inv_freq = (1.0 / (self.rope_theta ** (exponents / self.head_dim))).astype(np.float32)
        if self.rope_scaling is None:
            return inv_freq
        s = self.rope_scaling
        low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
        high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
        smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
            s.high_freq_factor - s.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
        is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
        return np.where(is_medium, smoothed, scaled).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Builds from a plain mapping (a ConfigDict's to_dict()); unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ModelConfigError(f"unknown model config keys: {', '.join(unknown)}")
        values = dict(values)
        scaling = values.get("rope_scaling")
        if scaling is not None and not isinstance(scaling, RopeScaling):
            try:
                values["rope_scaling"] = RopeScaling(**dict(scaling))
            except TypeError as e:
                raise ModelConfigError(f"rope_scaling: {e}") from e
        try:
            return cls(**values)
        except TypeError as e:
            raise ModelConfigError(f"model config: {e}") from e


# --- Hugging Face config.json --------------------------------------------------------------------


def _require(hf: dict[str, Any], key: str, where: str) -> Any:
    if key not in hf or hf[key] is None:
        raise ModelConfigError(f"{where}: missing required field {key!r}")
    return hf[key]


def _rope_from_hf(hf: dict[str, Any], where: str) -> tuple[float, RopeScaling | None]:
    # transformers v5 writes `rope_parameters` (theta inside); released checkpoints and v4 write
    # `rope_theta` + `rope_scaling`. Accept both.
    params = hf.get("rope_parameters") or {}
    legacy = hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = {**legacy, **params}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ModelConfigError(
            f"{where}: rope type {rope_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    if rope_type == "default":
        return float(theta), None
    try:
        return float(theta), RopeScaling(
            factor=float(scaling["factor"]),
            low_freq_factor=float(scaling["low_freq_factor"]),
            high_freq_factor=float(scaling["high_freq_factor"]),
            original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
        )
    except KeyError as e:
        raise ModelConfigError(f"{where}: llama3 rope scaling is missing field {e}") from e


def from_hf_config(hf: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """Translates a Hugging Face config.json mapping; `where` names the file in errors."""
    model_type = _require(hf, "model_type", where)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelConfigError(
            f"{where}: model_type {model_type!r} is not supported; expected one of "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise ModelConfigError(f"{where}: {flag}=true is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ModelConfigError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported")
    hidden = int(_require(hf, "hidden_size", where))
    heads = int(_require(hf, "num_attention_heads", where))
    head_dim = hf.get("head_dim") or hidden // heads
    sliding_window = hf.get("sliding_window")
    if model_type == "qwen3" and not hf.get("use_sliding_window", False):
        sliding_window = None
    if model_type == "llama":
        sliding_window = None
    theta, scaling = _rope_from_hf(hf, where)
    try:
        return ModelConfig(
            model_type=model_type,
            vocab_size=int(_require(hf, "vocab_size", where)),
            hidden_size=hidden,
            num_layers=int(_require(hf, "num_hidden_layers", where)),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            intermediate_size=int(_require(hf, "intermediate_size", where)),
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            qk_norm=model_type == "qwen3",
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 8192)),
            sliding_window=None if sliding_window is None else int(sliding_window),
        )
    except ModelConfigError as e:
        raise ModelConfigError(f"{where}: {e}") from e


def to_hf_config(config: ModelConfig, torch_dtype: str = "float32") -> dict[str, Any]:
    """A config.json mapping that transformers loads into the equivalent architecture."""
    hf: dict[str, Any] = {
        "architectures": [
            {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
             "qwen3": "Qwen3ForCausalLM"}[config.model_type]
        ],
        "model_type": config.model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.intermediate_size,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "max_position_embeddings": config.max_position_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "torch_dtype": torch_dtype,
        "dtype": torch_dtype,
        "use_cache": True,
        # The legacy layout is what released checkpoints use; transformers v5 also reads it.
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
    }
    if config.rope_scaling is not None:
        hf["rope_scaling"] = {"rope_type": "llama3", **dataclasses.asdict(config.rope_scaling)}
    if config.model_type == "llama":
        hf["mlp_bias"] = False
    else:
        hf["sliding_window"] = config.sliding_window
    if config.model_type == "qwen3":
        hf["use_sliding_window"] = config.sliding_window is not None
        hf["max_window_layers"] = config.num_layers
    return hf


def read_hf_config(path: str | Path) -> ModelConfig:
    """Reads `<path>/config.json` (or the file itself) with errors that name the file."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no config.json (is {path} a Hugging Face model folder?)")
    try:
        hf = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ModelConfigError(f"{file}: not valid JSON: {e}") from e
    if not isinstance(hf, dict):
        raise ModelConfigError(f"{file}: expected a JSON object")
    return from_hf_config(hf, where=str(file))
