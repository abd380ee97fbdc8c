"""SavedModel export: round trip in a fresh process, REST-shaped requests, saved_model_cli,
versioning, and atomic publication under SIGKILL.

One tiny run (bundled real digits, real MobileNet weights) is trained once per session and
shared with ``test_predict_evaluate.py`` through ``trained_run``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, SHARED_DATA, tiny_config

from tfft import data as data_lib
from tfft import export, publishing, train_lib

T10K = os.path.join(SHARED_DATA, "mnist", "mnist_t10k.npz")
OUTPUTS = ("probabilities", "class_ids", "class_names", "top_k_class_names",
           "top_k_probabilities")
TOP_K = 3


@dataclass(frozen=True)
class TrainedRun:
    """A finished tiny run, its live Keras result and one export of it."""

    workdir: str
    result: train_lib.RunResult
    version_dir: str

    @property
    def config(self):
        return self.result.config

    def reference(self, images: list[np.ndarray]) -> np.ndarray:
        """Live-model probabilities, with training's preprocessing applied in Python."""
        normalize = self.result.classifier.backbone.normalize
        size = self.config.data.image_size
        inputs = np.concatenate([
            data_lib.preprocess_images(tf.constant(img[None]), size, normalize).numpy()
            for img in images])
        return self.result.classifier.model(inputs, training=False).numpy()


_RUNS: dict[str, TrainedRun] = {}


def train_once(tmp_path_factory) -> TrainedRun:
    """Trains and exports the shared tiny run the first time any test module asks for it."""
    if "run" not in _RUNS:
        workdir = str(tmp_path_factory.mktemp("serving_run"))
        config = tiny_config(image_size=64, head_epochs=5, head_learning_rate=3e-3,
                             finetune_epochs=0, max_train_examples=500, max_eval_examples=100)
        result = train_lib.train_and_evaluate(config, workdir)
        version_dir = export.export_model(result.classifier.model, result.class_names, config,
                                          os.path.join(workdir, "export"), top_k=TOP_K)
        _RUNS["run"] = TrainedRun(workdir, result, version_dir)
    return _RUNS["run"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> TrainedRun:
    return train_once(tmp_path_factory)


def real_digits(start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Official MNIST test digits not in the bundled sample's test split (its first 1,000)."""
    with np.load(T10K) as npz:
        return npz["x"][start:start + count], npz["y"][start:start + count].astype(np.int64)


def png(image: np.ndarray) -> bytes:
    return tf.io.encode_png(image if image.ndim == 3 else image[..., None]).numpy()


def mixed_images() -> list[np.ndarray]:
    """Real digits at several sizes, gray and colour (colour = tinted, so channels differ)."""
    digits, _ = real_digits(1000, 4)
    gray_small = digits[0][..., None]
    gray_big = tf.image.resize(digits[1][..., None], (45, 37)).numpy().astype(np.uint8)
    tint = np.array([1.0, 0.6, 0.3])
    colour = (np.repeat(digits[2][..., None], 3, axis=-1) * tint).astype(np.uint8)
    colour_big = tf.image.resize(np.repeat(digits[3][..., None], 3, -1) * tint,
                                 (70, 90)).numpy().astype(np.uint8)
    return [gray_small, gray_big, colour, colour_big]


# ---------------------------------------------------------------- round trip


ROUND_TRIP_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf

    model_dir, inputs_path, outputs_path = sys.argv[1:4]
    loaded = tf.saved_model.load(model_dir)
    inputs = np.load(inputs_path, allow_pickle=False)
    results = {}
    out = loaded.signatures["serving_default"](images=tf.constant(list(inputs["encoded"])))
    for name, value in out.items():
        results["bytes/" + name] = value.numpy()
    for i in range(int(inputs["groups"])):
        out = loaded.signatures["serve_pixels"](pixels=tf.constant(inputs[f"pixels{i}"]))
        for name, value in out.items():
            results[f"pixels{i}/" + name] = value.numpy()
    assert not any(m == "tfft" or m.startswith("tfft.") for m in sys.modules)
    np.savez(outputs_path, **{k: v.astype("S") if v.dtype == object else v
                              for k, v in results.items()})
""")


def test_round_trip_in_a_fresh_process_matches_the_live_model(trained_run, tmp_path):
    images = mixed_images()
    groups = [[images[0], images[0][::-1]], [images[2], images[2][:, ::-1]], [images[3]]]
    arrays = {"encoded": np.array([png(i) for i in images], dtype=object), "groups": len(groups)}
    arrays.update({f"pixels{i}": np.stack(g) for i, g in enumerate(groups)})
    inputs_path, outputs_path = str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz")
    np.savez(inputs_path, **{k: (v.astype(bytes) if k == "encoded" else v)
                             for k, v in arrays.items()})
    script = tmp_path / "round_trip.py"
    script.write_text(ROUND_TRIP_SCRIPT)
    run = subprocess.run([sys.executable, str(script), trained_run.version_dir, inputs_path,
                          outputs_path], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stderr[-3000:]
    out = np.load(outputs_path)
    names = np.array(trained_run.result.class_names)

    def check(prefix: str, reference: np.ndarray) -> None:
        probs = out[f"{prefix}/probabilities"]
        assert probs.dtype == np.float32 and probs.shape == reference.shape
        assert np.max(np.abs(probs - reference)) <= 1e-5
        ids = out[f"{prefix}/class_ids"]
        np.testing.assert_array_equal(ids, reference.argmax(-1))
        np.testing.assert_array_equal(out[f"{prefix}/class_names"].astype(str), names[ids])
        order = np.argsort(-reference, axis=-1, kind="stable")[:, :TOP_K]
        np.testing.assert_array_equal(out[f"{prefix}/top_k_class_names"].astype(str),
                                      names[order])
        np.testing.assert_allclose(out[f"{prefix}/top_k_probabilities"],
                                   np.take_along_axis(reference, order, -1), atol=1e-5)

    check("bytes", trained_run.reference(images))
    for i, group in enumerate(groups):
        check(f"pixels{i}", trained_run.reference(group))


def test_gray_png_and_its_rgb_copy_give_the_same_answer(trained_run):
    loaded = tf.saved_model.load(trained_run.version_dir)
    digit = real_digits(1100, 1)[0][0]
    rgb = np.repeat(digit[..., None], 3, axis=-1)
    out = loaded.signatures["serving_default"](images=tf.constant([png(digit), png(rgb)]))
    probs = out["probabilities"].numpy()
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-6)


# ---------------------------------------------------------------- REST-shaped requests


def tf_serving_decode(body: str) -> tf.Tensor:
    """What TF Serving's REST API does with ``{"instances": [{"b64": ...}]}`` for a string
    input: base64-decode every instance into one tf.string batch."""
    instances = json.loads(body)["instances"]
    return tf.constant([base64.b64decode(instance["b64"]) for instance in instances])


def test_rest_request_returns_the_right_class_names(trained_run):
    digits, labels = real_digits(1000, 60)
    body = json.dumps({"instances": [{"b64": base64.b64encode(png(d)).decode("ascii")}
                                     for d in digits]})
    loaded = tf.saved_model.load(trained_run.version_dir)
    out = loaded.signatures["serving_default"](images=tf_serving_decode(body))
    predicted = [n.decode() for n in out["class_names"].numpy()]
    live = trained_run.reference(list(digits[..., None])).argmax(-1)
    names = trained_run.result.class_names
    assert predicted == [names[i] for i in live]
    accuracy = np.mean([p == names[y] for p, y in zip(predicted, labels, strict=True)])
    assert accuracy >= 0.5, f"{accuracy:.2f} of 60 real digits (chance is 0.1)"


def test_labels_and_config_travel_in_the_assets(trained_run):
    assets = os.path.join(trained_run.version_dir, "assets")
    with open(os.path.join(assets, export.LABELS_FILE)) as f:
        assert f.read().splitlines() == list(trained_run.result.class_names)
    with open(os.path.join(assets, export.CONFIG_FILE)) as f, \
            open(os.path.join(trained_run.workdir, "config.json")) as g:
        assert json.load(f) == json.load(g)


# ---------------------------------------------------------------- saved_model_cli


def signature_blocks(text: str) -> dict[str, str]:
    parts = re.split(r"signature_def\['([^']+)'\]:", text)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_saved_model_cli_lists_both_signatures(trained_run):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    run = subprocess.run([cli, "show", "--dir", trained_run.version_dir, "--all"],
                         capture_output=True, text=True, timeout=180,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stderr[-2000:]
    blocks = signature_blocks(run.stdout)
    assert {"serving_default", "serve_pixels"} <= set(blocks)
    assert re.search(r"inputs\['images'\] tensor_info:\s+dtype: DT_STRING\s+shape: \(-1\)",
                     blocks["serving_default"])
    assert re.search(r"inputs\['pixels'\] tensor_info:\s+dtype: DT_UINT8\s+"
                     r"shape: \(-1, -1, -1, -1\)", blocks["serve_pixels"])
    n = len(trained_run.result.class_names)
    for block in (blocks["serving_default"], blocks["serve_pixels"]):
        found = dict(re.findall(r"outputs\['(\w+)'\] tensor_info:\s+dtype: (\w+)", block))
        assert found == {"probabilities": "DT_FLOAT", "class_ids": "DT_INT32",
                         "class_names": "DT_STRING", "top_k_class_names": "DT_STRING",
                         "top_k_probabilities": "DT_FLOAT"}
        assert f"shape: (-1, {n})" in block and f"shape: (-1, {TOP_K})" in block
        assert "Method name is: tensorflow/serving/predict" in block


# ---------------------------------------------------------------- versions and atomicity


def test_publish_takes_the_next_free_version_and_never_replaces_one(tmp_path, monkeypatch):
    base = tmp_path / "export"
    for name in ("1", "2", "5", "notes", ".tmp-export-other"):
        (base / name).mkdir(parents=True)
    (base / "5" / "saved_model.pb").write_bytes(b"five")

    def staged(tag: str) -> str:
        tmp = base / f"staged-{tag}"
        tmp.mkdir()
        (tmp / "saved_model.pb").write_bytes(tag.encode())
        return str(tmp)

    assert publishing.publish(staged("a"), str(base)) == str(base / "6")
    monkeypatch.setattr(publishing, "versions", lambda _: [4])  # another exporter raced us to 5
    assert publishing.publish(staged("b"), str(base)) == str(base / "7")
    assert (base / "5" / "saved_model.pb").read_bytes() == b"five"
    assert (base / "7" / "saved_model.pb").read_bytes() == b"b"
    monkeypatch.undo()
    assert export.versions(str(base)) == [1, 2, 5, 6, 7]


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from tfft import export, rundir

    workdir, export_dir = sys.argv[1:3]
    config, model = rundir.load_run(workdir)
    names = export.run_class_names(workdir, config)
    options = export.ExportOptions(("saved_model", "litert", "onnx"))
    print("ready", flush=True)
    while True:
        export.export_model(model, names, config, export_dir, options=options)
""")


def assert_model_files_run(version_dir: str, trained_run: TrainedRun) -> None:
    """A published version's model.tflite and model.onnx load in their runtimes and answer
    like the live model (on digits already at the model's size, as apps give them)."""
    from tfft import model_files, portable
    from tfft.runtimes import PortableModel

    digits = real_digits(1200, 5)[0][..., None]
    pixels = portable.model_pixels(tf.constant(digits), trained_run.config.data.image_size)
    reference = trained_run.reference(list(pixels.numpy()))
    for name in ("model.tflite", "model.onnx"):
        runtime = PortableModel(model_files.resolve_model(os.path.join(version_dir, name)))
        probabilities = runtime.pixels(pixels)["probabilities"].numpy()
        assert np.max(np.abs(probabilities - reference)) <= 1e-4, name


def test_sigkill_at_random_moments_never_leaves_a_broken_version(trained_run, tmp_path):
    """Every format goes into the temporary version directory, so a kill at any moment (while
    the SavedModel, the LiteRT file or the ONNX file is written: the kills are spread over an
    export's ~12 s) leaves no half-written model file under a version number."""
    export_dir = str(tmp_path / "export")
    script = tmp_path / "export_forever.py"
    script.write_text(KILL_SCRIPT)
    rng = np.random.default_rng(5)
    digits = real_digits(1200, 5)[0][..., None]
    reference = trained_run.reference(list(digits))
    loadable: set[int] = set()
    for trial in range(3):
        proc = subprocess.Popen([sys.executable, str(script), trained_run.workdir, export_dir],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, cwd=ROOT)
        try:
            assert proc.stdout.readline().strip() == "ready", f"trial {trial}: exporter died"
            time.sleep(float(rng.uniform(0.1, 4.0)) + 4.5 * trial)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        for version in export.versions(export_dir):
            if version not in loadable:
                version_dir = os.path.join(export_dir, str(version))
                loaded = tf.saved_model.load(version_dir)
                assert {"serving_default", "serve_pixels"} <= set(loaded.signatures)
                assert_model_files_run(version_dir, trained_run)
                loadable.add(version)
    leftovers = [n for n in os.listdir(export_dir) if n.startswith(".tmp-export-")]
    version_dir = export.export_run(trained_run.workdir, export_dir, top_k=2)
    assert int(os.path.basename(version_dir)) == max(loadable, default=0) + 1
    assert set(os.listdir(export_dir)) == {str(v) for v in export.versions(export_dir)}, (
        f"stale temp dirs of killed exports were not removed (had {leftovers})")
    out = tf.saved_model.load(version_dir).signatures["serve_pixels"](
        pixels=tf.constant(digits))
    assert np.max(np.abs(out["probabilities"].numpy() - reference)) <= 1e-5
    assert out["top_k_class_names"].shape == (5, 2)
