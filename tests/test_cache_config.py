"""pipeline.cache_config: a cache's config read back as one typed record."""
from __future__ import annotations

import pytest

from pipeline.cache_config import CacheConfig
from pipeline.errors import FoleyError

RECORDED = {"backbone": "mobilenet_v2", "frames": 48, "fps": 12.0, "pool": "global", "dtype": "float16",
            "precision": "fp32", "weights_sha256": "ab" * 32, "preprocess": {"size": 96},
            "envelope": {"reduce": "max"}, "manifest": {"videos": "data/videos"},
            "backbone_provenance": {"checkpoint": "/w/mobilenet_v2-b0353104.pth", "weights_name": "imagenet"}}


def test_a_recorded_config_reads_back_typed_and_reproduces_its_extraction():
    cfg = CacheConfig.from_dict(RECORDED)
    assert (cfg.backbone, cfg.frames, cfg.fps, cfg.size, cfg.pool) == ("mobilenet_v2", 48, 12.0, 96, "global")
    assert cfg.weights_name == "imagenet" and not cfg.calibrated and cfg.raw == RECORDED
    assert cfg.extract_settings() == {"backbone": "mobilenet_v2", "frames": 48, "fps": 12.0, "size": 96,
                                      "envelope_reduce": "max", "dtype": "float16", "precision": "fp32",
                                      "pool": "global"}


def test_an_older_cache_without_pool_was_unpooled_and_a_random_init_is_calibrated():
    old = {k: v for k, v in RECORDED.items() if k != "pool"}
    old["backbone_provenance"] = {"checkpoint": "none", "init_seed": 0}
    cfg = CacheConfig.from_dict(old)
    assert cfg.pool == "none" and cfg.calibrated and cfg.weights_name is None


def test_a_record_without_extraction_settings_says_what_it_lacks():
    assert CacheConfig.from_dict(None) == CacheConfig()
    with pytest.raises(FoleyError, match="no backbone, frames"):
        CacheConfig.from_dict({"precision": "fp32"}).extract_settings()
    with pytest.raises(FoleyError, match="JSON object"):
        CacheConfig.from_dict(["not", "a", "dict"])
