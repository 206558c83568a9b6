"""How a cache's features were made, typed: the "config" of cache.json, as extraction writes it.

A run checkpoint carries the same record (`RunDescription.cache_config`), so training, finetune and
export read one type instead of each walking the dict with defaults of its own:

    CacheConfig.from_dict(FeatureCache(path).config)      # or a checkpoint's cache_config
    cfg.backbone, cfg.frames, cfg.fps, cfg.size, cfg.pool, cfg.envelope_reduce, cfg.weights_sha256
    cfg.extract_settings()     # extract_features keyword arguments that reproduce its numbers

A field an older cache lacks takes the value such caches were made with (pool "none"); `raw` keeps
the record as written (it is what fingerprints and reports quote).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import FoleyError

UNPOOLED = "none"           # caches made before --pool existed hold the whole last map


@dataclass(frozen=True)
class CacheConfig:
    """The settings of a cache's features; None where the record does not say."""
    backbone: str | None = None
    frames: int | None = None
    fps: float | None = None
    size: int | None = None                 # frame side the backbone saw, pixels
    pool: str = UNPOOLED
    envelope_reduce: str | None = None
    dtype: str | None = None                # stored feature dtype
    precision: str | None = None            # compute precision of the backbone
    weights_sha256: str | None = None
    checkpoint: str | None = None           # the weights file, or "none" for a calibrated random init
    weights_name: str | None = None         # named weights ("imagenet"), found again on any machine
    manifest: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict | None) -> "CacheConfig":
        """Read a cache.json config (or a checkpoint's cache_config; None or {} gives an empty one)."""
        d = d or {}
        if not isinstance(d, dict):
            raise FoleyError(f"a cache config must be a JSON object, got {type(d).__name__}")
        provenance = d.get("backbone_provenance") or {}
        return cls(backbone=d.get("backbone"), frames=_maybe(int, d.get("frames")), fps=_maybe(float, d.get("fps")),
                   size=_maybe(int, (d.get("preprocess") or {}).get("size")), pool=d.get("pool", UNPOOLED),
                   envelope_reduce=(d.get("envelope") or {}).get("reduce"), dtype=d.get("dtype"),
                   precision=d.get("precision"), weights_sha256=d.get("weights_sha256"),
                   checkpoint=provenance.get("checkpoint"), weights_name=provenance.get("weights_name"),
                   manifest=d.get("manifest") or {}, raw=dict(d))

    @property
    def calibrated(self) -> bool:
        """A seeded random init whose BatchNorm was calibrated: its weights live in the cache."""
        return self.checkpoint == "none"

    def extract_settings(self) -> dict:
        """extract_features keyword arguments that reproduce this cache's numbers (its fingerprint
        inputs); FoleyError naming what the record lacks."""
        settings = {"backbone": self.backbone, "frames": self.frames, "fps": self.fps, "size": self.size,
                    "envelope_reduce": self.envelope_reduce, "dtype": self.dtype, "precision": self.precision,
                    "pool": self.pool}
        missing = [k for k, v in settings.items() if v is None]
        if missing:
            raise FoleyError(f"the cache config does not record how its features were extracted (no "
                             f"{', '.join(missing)})")
        return settings


def _maybe(kind, value):
    return None if value is None else kind(value)
