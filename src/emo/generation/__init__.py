"""Generation: the pipeline (portrait + audio -> mp4) and the `emo generate` command."""

# Where the audio guidance applies (GenerationOptions.audio_guidance_region); here so that the command's
# --help need not import the pipeline (torch).
AUDIO_GUIDANCE_REGIONS = ("frame", "mouth")
