"""foleycache: predict the timing and loudness of interaction sounds from video.

Stages (one module each): media (decode + envelope), data (SSv2 annotations),
synthetic (demo dataset), backbones (3D CNNs), cache (feature shards),
extract (stage 1), train (head, stage 2), finetune, metrics, export, demo.
"""

__version__ = "0.1.0"
