"""`emo bench` targets: what their parents hand each measuring child process (no measurement is run)."""

from pathlib import Path

from emo.cli import main


def test_bench_generate_passes_the_audio_shape_to_each_child(monkeypatch, capsys):
    import argparse

    from emo.bench import generate as generate_bench

    commands = []

    def child(target, argv):
        commands.append(argv)
        assert target == "generate"
        return {
            "seconds": 2.0,
            "frames": 20,
            "peak_rss_mib": 500.0,
            "peak_gpu_mib": None,
            "audio_features_mib": 0.8,
            "audio_shape": [13, 768],
        }

    monkeypatch.setattr(generate_bench, "measure_in_child", child)
    parser = argparse.ArgumentParser()
    generate_bench.add_arguments(parser)
    assert generate_bench.run(parser.parse_args(["--lengths", "5,60", "--audio-shape", "base"])) == 0
    assert len(commands) == 2  # one process per length
    for argv in commands:
        child_args = parser.parse_args(argv)
        assert child_args.audio_shape == "base" and child_args.child in (5.0, 60.0)
    assert "audio features 13 x 768 per frame" in capsys.readouterr().out


def test_default_inputs_are_inside_the_package():
    """An installed package has no tests/ or examples/: the defaults are shipped assets, attributed."""
    import argparse

    from emo.bench import ASSETS, evaluate, face, generate

    defaults = []
    for target in (evaluate, face, generate):
        parser = argparse.ArgumentParser()
        target.add_arguments(parser)
        args = vars(parser.parse_args([]))
        defaults += [args[k] for k in ("video", "image", "audio") if k in args]
    assert len(defaults) == 4
    sources = (ASSETS / "SOURCES.md").read_text()
    for path in map(Path, defaults):
        assert path.parent == ASSETS and path.is_file() and f"| {path.name} |" in sources
    assert sum(path.stat().st_size for path in set(map(Path, defaults))) < 2**20  # small enough to ship


def test_preprocess_without_videos_says_what_to_pass(capsys):
    assert main(["bench", "preprocess"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emo: error: pass VIDEOS") and "tests/data/" in err and "\n" not in err
