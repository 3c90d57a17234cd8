"""The `emo ui` page: portrait (with its face box and region drawn), audio (files or the microphone), the
generation options of `emo generate` with their defaults and help, Generate / Cancel, the videos.

Bad input shows the same one-line message as the CLI, in the page; the server keeps serving.
"""

from __future__ import annotations

import argparse
import logging
import os

# Before gradio is imported: it reads the variable at import. Nothing of the page may reach the network.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from emo.conditioning.face import REGIONS, prepare_portrait  # noqa: E402
from emo.errors import EmoError  # noqa: E402
from emo.generation import cli as generate_cli  # noqa: E402
from emo.generation.pipeline import FULL_MOUTH_GUIDANCE, GenerationOptions  # noqa: E402
from emo.ui.jobs import Cancelled, GenerationService  # noqa: E402

log = logging.getLogger(__name__)

# The GenerationOptions fields the page sets, in page order; each takes its label, default and help from
# the `emo generate` flag of the same name, so the two cannot drift apart.
PORTRAIT_OPTIONS = ("region", "size", "strict")  # these change the crop: the preview follows them
OPTIONS = (
    "steps",
    "sampler",
    "speed",
    "seed",
    "reference_guidance",
    "audio_guidance",
    "audio_guidance_region",
    "strength",
    "fps",
    "max_duration",
)
GUIDE_OPTIONS = ("mouth_guidance",)  # shown only for a model with a mouth guide (emo.conditioning.mouth)
FACE_COLOR, REGION_COLOR = (40, 220, 40), (255, 150, 0)


def page_options(pipe) -> tuple[str, ...]:
    """The generation options this model's page shows: OPTIONS, and the mouth guidance if it has a guide."""
    return OPTIONS + (GUIDE_OPTIONS if pipe.mouth_guide is not None else ())


def generate_flags() -> dict[str, argparse.Action]:
    """`emo generate`'s flags by destination name."""
    parser = argparse.ArgumentParser(add_help=False)
    generate_cli.add_arguments(parser)
    return {action.dest: action for action in parser._actions}


def option_widget(action: argparse.Action, default=None) -> gr.components.Component:
    """The widget for one `emo generate` flag; ``default`` replaces the flag's own (one the model decides)."""
    label = action.option_strings[0].lstrip("-").replace("-", " ")
    common = dict(label=label, info=action.help, elem_id=action.dest)
    value = action.default if default is None else default
    if action.dest == "region":
        return gr.Dropdown(list(REGIONS), value=value, allow_custom_value=True, **common)
    if action.choices:
        return gr.Radio(list(action.choices), value=value, **common)
    if action.nargs == 0:  # a store_true switch
        return gr.Checkbox(value=bool(value), **common)
    return gr.Number(value=value, precision=0 if action.type is int else None, **common)


def options_from(names: tuple[str, ...], values) -> GenerationOptions:
    """The page's option values as checked GenerationOptions (the CLI's messages for bad values)."""
    for name, value in zip(names, values):
        if value is None:  # an emptied number field
            raise EmoError(f"{name.replace('_', ' ')} is empty; give a value")
    opts = GenerationOptions(**dict(zip(names, values)))
    opts.validate()
    return opts


def portrait_preview(image: str, size: int, region: str, strict: bool) -> tuple[np.ndarray, str]:
    """The square crop the model sees, with the detected face box (green) and the region (orange) drawn."""
    from PIL import Image, ImageDraw

    opts = options_from(PORTRAIT_OPTIONS, (region, size, strict))
    portrait = prepare_portrait(image, size=opts.size, region=opts.region, strict=opts.strict)
    picture = Image.fromarray(portrait.image)
    draw = ImageDraw.Draw(picture, "RGBA")
    width = max(2, opts.size // 128)
    rows, cols = np.nonzero(portrait.mask)
    draw.rectangle(
        (int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())),
        fill=(*REGION_COLOR, 40),
        outline=REGION_COLOR,
        width=width,
    )
    if portrait.face_box is not None:
        draw.rectangle(portrait.face_box.to_int(), outline=FACE_COLOR, width=width)
        found = (
            f"{portrait.num_faces} faces found, the largest is used"
            if portrait.num_faces > 1
            else "face found"
        )
        note = f"{found}: green is the face, orange the region `{opts.region}` where it may move"
    else:
        note = f"no face found: orange is the region `{opts.region}`"
    return np.asarray(picture), note


def error_line(exc: BaseException) -> str:
    """The page's one line for an error: the CLI's message for a user error, a short one for a bug."""
    if isinstance(exc, EmoError):
        return f"**Error:** {exc}"
    log.exception("internal error")  # the traceback goes to the server's log, never to the page
    return f"**Internal error:** {type(exc).__name__}: {exc} (the server log has the details)"


def build_app(service: GenerationService, notice: str | None = None) -> gr.Blocks:
    flags = generate_flags()
    with gr.Blocks(title="EMO", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown(
            "# EMO\nOne portrait and a speech or singing track make a talking or singing portrait video."
        )
        if notice:
            gr.Markdown(notice, elem_id="notice")
        with gr.Row():
            with gr.Column():
                portrait = gr.Image(type="filepath", sources=["upload"], label="Portrait", elem_id="portrait")
                audio = gr.Audio(
                    sources=["upload", "microphone"], type="filepath", label="Audio", elem_id="audio"
                )
                more_audio = gr.File(
                    file_count="multiple",
                    type="filepath",
                    label="More audio files for this portrait (a batch: one video each)",
                    elem_id="more_audio",
                )
            with gr.Column():
                preview = gr.Image(
                    label="As the model sees it", interactive=False, height=320, elem_id="preview"
                )
                preview_note = gr.Markdown(elem_id="preview_note")
                # Size, strength and the audio guidance default to the model's own (model_defaults), else
                # GenerationOptions'; the mouth guide, when the page shows it, to full strength (the CLI's
                # default for such a model).
                model_defaults = {
                    **generate_cli.fallback(),
                    "mouth_guidance": FULL_MOUTH_GUIDANCE,
                    **service.pipe.defaults,
                }
                portrait_widgets = [
                    option_widget(flags[name], model_defaults.get(name)) for name in PORTRAIT_OPTIONS
                ]
        with gr.Accordion("Generation options", open=True):
            with gr.Row():
                options = page_options(service.pipe)
                option_widgets = [option_widget(flags[name], model_defaults.get(name)) for name in options]
        with gr.Row():
            generate = gr.Button("Generate", variant="primary", elem_id="generate")
            cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            video = gr.Video(
                label="Video", interactive=False, buttons=["download"], height=400, elem_id="video"
            )
            videos = gr.File(label="All videos", file_count="multiple", interactive=False, elem_id="videos")

        def show_portrait(image, region, size, strict):
            if not image:
                return None, ""
            try:
                return portrait_preview(image, size, region, strict)
            except Exception as exc:
                return None, error_line(exc)

        gr.on(
            [
                portrait.change,
                portrait_widgets[0].change,
                portrait_widgets[1].submit,
                portrait_widgets[1].blur,
                portrait_widgets[2].change,
            ],
            show_portrait,
            inputs=[portrait, *portrait_widgets],
            outputs=[preview, preview_note],
            concurrency_limit=4,  # face detection only: it need not wait for a generation
        )

        widgets = [*portrait_widgets, *option_widgets]

        # The inputs come as one {component: value} dict: Gradio passes the request and the progress tracker
        # only to parameters before any *args.
        def run(values: dict, request: gr.Request, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
            done: list[str] = []
            lines: list[str] = []
            try:
                if not values[portrait]:
                    raise EmoError("no portrait: upload an image with a face")
                opts = options_from(PORTRAIT_OPTIONS + options, [values[w] for w in widgets])
                tracks = [t for t in [values[audio], *(values[more_audio] or [])] if t]

                def on_progress(index, p):
                    progress(
                        (p.step, p.steps),
                        desc=f"audio {index + 1}/{len(tracks)}, clip {p.clip + 1}/{p.clips}",
                        unit="steps",
                    )

                for job in service.run(request.session_hash, values[portrait], tracks, opts, on_progress):
                    if job.result is None:
                        lines.append(f"**Error:** {job.error}")
                    else:
                        done.append(str(job.result.path))
                        lines.append(
                            f"{job.audio.name}: {job.result.frames} frames, {job.result.seconds:.1f} s"
                        )
                    yield (done[-1] if done else None), list(done), "\n\n".join(lines)
            except Cancelled:  # the videos already shown stay (their files are gone with the job's folder)
                yield gr.skip(), gr.skip(), "\n\n".join([*lines, "Cancelled."])
            except Exception as exc:
                yield gr.skip(), gr.skip(), "\n\n".join([*lines, error_line(exc)])

        job = generate.click(
            run,
            inputs={portrait, audio, more_audio, *widgets},
            outputs=[video, videos, status],
            concurrency_limit=1,  # one generation at a time on the device; the others wait in the queue
            concurrency_id="device",
        )

        def stop(request: gr.Request):
            service.cancel(request.session_hash)
            return "Cancelled."

        cancel.click(stop, outputs=status, cancels=[job], queue=False)
    return demo
