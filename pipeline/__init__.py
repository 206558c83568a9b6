"""foleycache: predict the timing and loudness of interaction sounds from video.

One module per concern; the imports follow the pipeline's order, so following one clip from a video
file to a row of the report visits each module once, top to bottom:

  errors, options      one-line user errors; the torch-free vocabulary of choices and defaults
  runtime, fsio        device / precision / autocast / workers / seeds; atomic writes, sha256, JSON
  distributed          torchrun: one process group helper for extraction, training and pretraining
  media                load_clip: a video file -> frames [3, T, S, S] + loudness envelope [T]
  data                 manifests (SSv2 JSON, CSV / JSON Lines, folders, windows) -> Annotations
  backbones            the registry: model3d_1 (+ width variants), mobilenet_v2; checkpoints
  shards, chunks, cache
                       ShardWriter (zarr / hdf5, --compression) -> cache.json index -> FeatureCache;
                       chunks: a shard's clips decoded straight into a training batch
  extract              stage 1: clips through a backbone into a cache (extract-features)
  head                 the seed's LSTM+FC head, its input transforms, masked BCE
  loader               a cache as training batches (lease ring, preload)
  runs                 the run directory and RunCheckpoint, written and read in one place
  loop                 get_lr, evaluate_model, fit: the training loop every trainer uses
  train                stage 2: train-head
  finetune             backbone + head end to end from videos
  framecache, pretrain, compare
                       a backbone trained to classify the labels (+ the envelope as an auxiliary
                       loss); the with/without-sound comparison over seeds
  metrics              every score and baseline (pure numpy)
  run_features, score, figures, report, export
                       export-predictions: which features a run reads, its predictions scored
                       through loop.evaluate_model, plots / GIFs, report.md / .html
  synthetic/           make-synthetic: physics -> scenes -> looks -> frames -> audio -> encode
  demo, cli            the whole pipeline in one command; the click CLI (parse, validate, call)
"""

__version__ = "0.1.0"
