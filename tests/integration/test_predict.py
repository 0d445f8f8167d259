"""`python -m pipeline.predict` on real MNIST test images, clean and made photo-like, with the champion model
from the registry and with a .keras file."""

from __future__ import annotations

import io

import numpy as np
import pytest
import yaml
from PIL import Image, ImageFilter

from pipeline import tracking
from pipeline.config import to_dict
from pipeline.core.errors import run_cli
from pipeline.data.formats import load_split
from pipeline.data.imageprep import to_mnist
from pipeline.model.fit import fit
from pipeline.predict.images import main
from pipeline.stages.evaluate import evaluate, gate, log_evaluation
from pipeline.stages.train import log_training


def photo_like(digit: np.ndarray, seed: int) -> Image.Image:
    """A test image as if photographed: dark ink on light paper, 10x larger, off-centre, noisy, JPEG."""
    rng = np.random.default_rng(seed)
    paper = np.full((400, 360), 225.0)
    big = np.asarray(
        Image.fromarray((digit[..., 0] * 255).astype(np.uint8)).resize((280, 280), Image.Resampling.BICUBIC)
    )
    paper[30:310, 60:340] -= big * 0.8  # ink darkens the paper
    noisy = np.clip(paper + rng.normal(0, 6, paper.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).filter(ImageFilter.GaussianBlur(1)).convert("RGB").save(buffer, "JPEG", quality=70)
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.fixture
def champion(make_cfg, tmp_path):
    """A model trained on the small subset, evaluated and made champion in a tmp store; params.yaml for it."""
    return make_champion(make_cfg("train.subset=1500", "train.epochs=2"), tmp_path)


def make_champion(cfg, tmp_path):
    """Train ``cfg``'s model, evaluate it and gate it (the champion of its empty store); write params.yaml for it
    in ``tmp_path``, which then stands for the project (``python -m pipeline.tracking serve`` reads it)."""
    with tracking.start_run(cfg) as run:
        model_id = log_training(cfg, fit(cfg))
        result = evaluate(cfg)
        log_evaluation(cfg, result, model_id)
        gate(cfg, result, model_id, run.info.run_id)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return cfg


def test_predict_prints_class_probability_and_runner_up_for_clean_and_photographed_digits(champion, tmp_path, capsys):
    import keras

    x, y = load_split(champion.paths.processed_dir, "test")
    paths = []
    for i in range(6):
        Image.fromarray((x[i, ..., 0] * 255).astype(np.uint8)).save(tmp_path / f"clean{i}.png")
        photo_like(x[i], seed=i).save(tmp_path / f"photo{i}.jpg")
        paths += [tmp_path / f"clean{i}.png", tmp_path / f"photo{i}.jpg"]

    run_cli(lambda: main([*map(str, paths), "--params", str(tmp_path / "params.yaml")]))  # the champion, by alias
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 12
    model = keras.models.load_model(champion.paths.model)
    expected = model.predict(np.stack([to_mnist(Image.open(p)) for p in paths]), verbose=0)
    for line, path, probs in zip(lines, paths, expected, strict=True):
        first, second = np.argsort(probs)[::-1][:2]
        assert line == f"{path}: {first} (p={probs[first]:.3f}); runner-up {second} (p={probs[second]:.3f})"
    predicted = [int(line.split(": ")[1].split()[0]) for line in lines]
    # A photographed digit reads as its clean scan does (6 pairs); most are right (a 2-epoch, 2,000-image model).
    assert predicted[0::2] == predicted[1::2]
    assert sum(p == t for p, t in zip(predicted[0::2], y[:6], strict=True)) >= 4

    run_cli(lambda: main([str(paths[1]), "--model", champion.paths.model]))  # a .keras file
    assert capsys.readouterr().out.startswith(f"{paths[1]}: {predicted[1]} (p=")


def test_a_file_that_is_not_an_image_is_refused_without_a_traceback(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda: main([str(tmp_path / "notes.txt"), "--model", str(tmp_path / "none.keras")]))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "notes.txt: not an image Pillow can read" in err and "Traceback" not in err
