"""Three-stage EMO training (EMO.md §3).

- `emo.training.config`: `StageConfig` (typed, from YAML), `load_config`
- `emo.training.trainer`: `Trainer(cfg).fit(resume=..., stop_at=...)` on accelerate
- `emo.training.stages`: starting weights, datasets and batch -> latents per stage
- `emo.training.export`: run / checkpoint -> `emo generate --weights` directory

Nothing is imported here so `emo --help` stays fast.
"""
