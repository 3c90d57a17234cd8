"""Generation: the pipeline (portrait + audio -> mp4) and the `emo generate` command."""
