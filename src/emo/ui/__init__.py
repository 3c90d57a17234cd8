"""The web page (`emo ui`): a Gradio app over one loaded :class:`~emo.generation.pipeline.EMOPipeline`.

- :mod:`emo.ui.jobs`: the generation service behind the page (one job at a time, cancel, temporary files)
- :mod:`emo.ui.app`: the page itself (``build_app``)
- :mod:`emo.ui.cli`: the command
"""
