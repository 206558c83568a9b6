"""foleycache: predict the timing and loudness of interaction sounds from video.

One module per concern; the imports follow the pipeline's order, so following one clip from a video
file to a row of the report visits each module once, top to bottom:

  errors, options      one-line user errors and FaultyVideo (a bad video, recorded with a reason); the
                       torch-free vocabulary of choices and defaults
  runtime, fsio        device / precision / autocast / workers / seeds; atomic writes, sha256, JSON
  distributed          torchrun: one process group helper for extraction, training and pretraining
  media                load_clip: a video file -> frames [3, T, S, S] + loudness envelope [T]
  data                 manifests (SSv2 JSON, CSV / JSON Lines, folders, windows) -> Annotations
  decoding             clips of manifest entries decoded in DataLoader workers; failure records
  architectures        the networks: model3d_1's 3D CNN, MobileNetV2 per frame, pooling to [B, T, D]
  backbones            the registry: model3d_1 (+ width variants), mobilenet_v2 (+ spacetime); weights, checkpoints
  shards, chunks, feature_cache, cache
                       ShardWriter (zarr / hdf5, --compression) -> cache.json index -> FeatureCache;
                       chunks: a shard's clips decoded straight into a training batch; feature_cache:
                       the reader (FeatureCache, cache-info); cache: fingerprint, begin / finalize
                       (writes the index), re-exports the reader
  cache_config         CacheConfig: how a cache's features were made, typed (cache.json's config)
  extract              stage 1: clips through a backbone into a cache (extract-features)
  head                 the LSTM+FC head (the seed's causal LSTM, bidirectional, Conv1d front), its
                       input transforms, masked BCE and the onset term
  loader               a cache as training batches (lease ring, preload)
  runs                 the run directory and RunCheckpoint, written and read in one place
  loop                 get_lr, evaluate_model, fit: the training loop every trainer uses
  train                stage 2: train-head
  recipes              compare-heads: head recipes trained over seeds, mean ± standard error
  finetune             backbone + head end to end from videos
  framecache, stemcache, pretrainer, pretrain, probe, compare
                       a backbone trained further on the labels, the envelope or both (frozen
                       stages computed once); a linear probe; the four-arm comparison over seeds
  metrics              every score and baseline (pure numpy)
  run_features, score, timeline, figures, preview, report, export
                       export-predictions and predict: which features a run reads, its predictions
                       scored through loop.evaluate_model, one curve and onset list per video,
                       plots / GIFs / MP4 previews, report.md / .html
  synthetic/           make-synthetic: physics -> scenes -> looks -> frames -> audio -> encode
  demo, cli            the whole pipeline in one command; the click CLI (parse, validate, call)
"""

__version__ = "0.1.0"
