"""Pruning and LRP on any model: several inputs (one a recurrent state, one a scalar), several heads, dense
masks, no labels. Relevance is seeded on the model's own outputs by role, every head found by tracing stays
unpruned and every output keeps its shape, FLOPs targets hold, and the result is scored label-free against the
unpruned model (fidelity, the task's headline) from the library and from the command line.

Models are the small real ones of :mod:`tests.shapes`, trained briefly (cached) on data from wheels.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgetl.artifact import Artifact, Format, InputSpec
from edgetl.contract import parse_flags
from edgetl.contract_read import resolve_contract
from edgetl.errors import ConfigError, ModelError
from edgetl.inputs import InputSet
from edgetl.prune import CRITERIA, PruneConfig, layer_widths, prune, relevance_scores
from edgetl.prune.feeds import InputReference
from edgetl.prune.surgery import check_output_shapes, output_layers, output_shapes
from tests import shapes

ROOT = Path(__file__).resolve().parents[1]
DET_ROLES = ("output0:boxes:N,A,4:xyxy", "output1:scores")
HEADS = {"box": 4, "score": 1, "landmark": 10}


@pytest.fixture(scope="module")
def shape_cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp().parent / "edgetl-fixtures"


def _contract(model, sample, **flags):
    return resolve_contract(model, parse_flags(**flags), data=sample)


@pytest.fixture(scope="module")
def facedet(shape_cache):
    model = shapes.trained("FaceDetLike", shape_cache)
    images, _ = shapes.det_data(60, seed=7)
    samples = tuple({"image": images[i : i + 1]} for i in range(len(images)))
    contract = _contract(model, samples[0], inputs=["Nx3x32x32:float32"], roles=DET_ROLES, task="detection")
    return model, contract, samples


@pytest.fixture(scope="module")
def segnet(shape_cache):
    model = shapes.trained("SegNet", shape_cache)
    x = shapes.mnist(None)[0][4000:4060]
    samples = tuple({"image": x[i : i + 1]} for i in range(len(x)))
    contract = _contract(model, samples[0], inputs=["Nx1xHxW:float32"], task="segmentation")
    return model, contract, samples


def _artifact(model, contract, arch=None):
    return Artifact(format=Format.TORCH, model=model, input_spec=None, labels=(), arch=arch, contract=contract)


# --------------------------------------------------------------------------- relevance
def test_relevance_on_three_heads_reaches_every_head_and_follows_the_selection(facedet):
    model, contract, samples = facedet
    ref = InputReference.from_inputs(samples, contract, limit=24)
    every = relevance_scores(model, ref, measure_cost=False)
    for head in HEADS:  # boxes, scores and the landmarks (role other) are all seeded
        assert float(every.scores[head].sum()) > 0, head
    body = every.scores["body.0"]
    assert body.shape == (16,) and float(body.sum()) > 0
    # seeded on the scores alone, no relevance reaches the box or landmark heads, and the backbone ranking moves
    scores_only = _contract(model, samples[0], inputs=["Nx3x32x32:float32"], roles=DET_ROLES, task="detection",
                            outputs=["output1"])
    only = relevance_scores(model, InputReference(ref.samples, scores_only), measure_cost=False)
    assert float(only.scores["score"].sum()) > 0
    assert all(float(only.scores[h].sum()) == 0 for h in ("box", "landmark") if h in only.scores)
    assert not torch.equal(torch.argsort(only.scores["body.6"]), torch.argsort(every.scores["body.6"]))
    # regression heads are seeded relative to their mean: the signed seed is about zero, and the result says so
    assert every.conservation["input_over_seed"] is None and any("about zero" in n for n in every.notes)


def test_mask_seed_is_the_per_pixel_predicted_class(segnet):
    model, contract, samples = segnet
    ref = InputReference.from_inputs(samples[:8], contract)
    seeding = ref.seeding(model)
    (example, n), = list(ref.batches(8))
    out = model(*example)
    (tensor,), (seed,) = seeding.seed(out, n)
    assert seed.shape == out.shape == (8, 2, 28, 28)
    predicted = out.argmax(1)
    assert torch.equal(seed.argmax(1), predicted)  # one-hot at the model's own prediction, pixel by pixel
    assert (seed > 0).sum(1).eq(1).all()
    foreground = int((predicted == 1).sum())
    assert 0 < foreground < 0.3 * predicted.numel()  # a minority class ...
    # ... and yet each predicted class holds half the seed: the background does not drown the digits
    assert float(seed[:, 1].sum()) == pytest.approx(n / 2, rel=1e-5)
    assert float(seed[:, 0].sum()) == pytest.approx(n / 2, rel=1e-5)
    assert float(seed.sum()) == pytest.approx(n)  # one unit of relevance per sample
    result = relevance_scores(model, ref, measure_cost=False)
    assert 0.2 < result.conservation["input_over_seed"] < 5.0
    assert set(result.scores) == {"net.0", "net.2", "net.4"}


def test_three_inputs_with_state_and_scalar_rate_are_scored_sample_by_sample(tmp_path):
    torch.manual_seed(0)
    model = shapes.VadLike().eval()
    rng = np.random.default_rng(0)
    samples = tuple({"audio": rng.standard_normal((1, 256)).astype(np.float32),
                     "state": rng.standard_normal((2, 1, 32)).astype(np.float32) * 0.1,
                     "sr": np.array(16000, dtype=np.int64)} for _ in range(12))
    contract = _contract(model, samples[0], inputs=["audio:Nx256:float32", "state:2xNx32:float32", "sr:scalar:int64"],
                         roles=("output1:state",))
    ref = InputReference.from_inputs(samples, contract)
    assert not ref.batchable  # the state's batch axis is not named: one sample at a time
    assert [o.name for o in contract.metric_outputs()] == ["output0"]  # the recurrent state is not a metric output
    res = relevance_scores(model, ref, measure_cost=True)
    assert float(res.scores["feat"].sum()) > 0 and res.baseline_seconds > 0
    pruned = prune(_artifact(model, contract), PruneConfig(ratio=0.5, round_to=None),
                   data=InputSet(samples=samples, origin="test"))
    m = pruned.history[-1].metrics
    widths = m["widths_after"]
    assert widths["feat"] < 32 and widths["cell0"] == widths["cell1"] == 32 and widths["head"] == 1
    assert m["output_shapes"] == {"output0": [1, 1], "output1": [2, 1, 32]}
    out = pruned.model(*(torch.from_numpy(samples[0][k]) for k in ("audio", "state", "sr")))
    assert out[0].shape == (1, 1) and out[1].shape == (2, 1, 32)


def test_time_major_ctc_recognizer_keeps_its_decodes_with_lrp(shape_cache):
    model = shapes.trained("CtcRecognizer", shape_cache)
    x, _ = shapes.ctc_data(60, seed=5)
    samples = tuple({"image": x[i : i + 1]} for i in range(len(x)))
    contract = _contract(model, samples[0], inputs=["Nx1x8xW:float32"], roles=["output:sequence:T,N,C"],
                         task="sequence")
    data = InputSet(samples=samples, origin="test")
    got = {c: prune(_artifact(model, contract), PruneConfig(criterion=c, ratio=0.3), data=data).history[-1].metrics
           for c in ("lrp", "l1")}
    lrp, l1 = got["lrp"]["headline"], got["l1"]["headline"]
    assert lrp["metric"] == "decode_agreement"
    # measured: LRP keeps every greedy decode (1.0), weight magnitude 0.08 at the same ratio
    assert lrp["value"] >= 0.9 and lrp["value"] > l1["value"] + 0.3, (lrp, l1)
    assert got["lrp"]["output_shapes"] == {"output": [12, 1, 11]} and got["lrp"]["widths_after"]["head"] == 11


def test_a_labelled_classifier_through_its_contract_reports_accuracy_and_agreement(shape_cache):
    model = shapes.trained("PooledClassifier", shape_cache)
    x, y = shapes.mnist(None)
    samples = tuple({"image": x[i : i + 1]} for i in range(4000, 4100))
    contract = _contract(model, samples[0], inputs=["Nx1x28x28:float32"], task="classification")
    art = Artifact(format=Format.TORCH, model=model, input_spec=None, labels=shapes.WORDS, contract=contract)
    out = prune(art, PruneConfig(ratio=0.3), data=InputSet(samples=samples, origin="test", labels=y[4000:4100]))
    m = out.history[-1].metrics
    assert m["headline"]["metric"] == "top1_agreement" and m["headline"]["value"] >= 0.9
    assert m["accuracy_before"] >= 0.85 and m["accuracy_after"] >= m["accuracy_before"] - 0.1
    assert m["fidelity"]["classification"][0]["samples"] == m["fidelity_samples"] == 20


# --------------------------------------------------------------------------- surgery
def test_output_layers_are_found_by_tracing(facedet, segnet):
    det, _, det_samples = facedet
    assert sorted(output_layers(det, torch.from_numpy(det_samples[0]["image"]))) == sorted(HEADS)
    seg, _, _ = segnet
    assert output_layers(seg, torch.zeros(1, 1, 20, 24)) == ["net.4"]


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_every_criterion_prunes_the_three_head_detector_keeping_every_head(facedet, criterion):
    model, contract, samples = facedet
    before = layer_widths(model)
    out = prune(_artifact(model, contract), PruneConfig(criterion=criterion, ratio=0.3, reference_samples=16),
                data=InputSet(samples=samples, origin="test"))
    m = out.history[-1].metrics
    after = layer_widths(out.model)
    assert {h: after[h] for h in HEADS} == HEADS
    assert sum(after.values()) < sum(before.values()) and m["params_after"] < m["params_before"]
    x = torch.from_numpy(np.concatenate([s["image"] for s in samples[:5]]))
    boxes, scores, landmarks = out.model(x)
    assert boxes.shape == (5, 16, 4) and scores.shape == (5, 16) and landmarks.shape == (5, 16, 10)
    assert m["headline"]["metric"] == "box_f1" and m["task"] == "detection"
    assert m["fidelity"]["detection"][0]["reference_boxes"] > 0  # the unpruned model found faces to agree on
    assert "val_accuracy_after" not in m and "val_accuracy_before" not in m


def test_lrp_beats_random_on_the_segmenter_without_labels(segnet):
    model, contract, samples = segnet
    data = InputSet(samples=samples, origin="test")

    def miou(**kw):
        head = prune(_artifact(model, contract), PruneConfig(ratio=0.5, round_to=None, **kw), data=data
                     ).history[-1].metrics["headline"]
        assert head["metric"] == "miou"
        return head["value"]

    lrp = miou(criterion="lrp")
    chance = [miou(criterion="random", seed=s) for s in range(4)]
    assert lrp > np.mean(chance) + 0.05 and lrp > max(chance), (lrp, chance)  # measured: 0.95 against 0.56..0.91


def test_flops_target_and_ignore_on_a_multi_head_model(facedet):
    from edgetl.prune import layers_matching

    model, contract, samples = facedet
    out = prune(_artifact(model, contract), PruneConfig(criterion="l1", target_flops=0.6, ignore=layers_matching(
        "body.0")), data=InputSet(samples=samples, origin="test"))
    m = out.history[-1].metrics
    assert m["flops_after"] <= 0.6 * m["flops_before"] and m["flops_after"] >= 0.4 * m["flops_before"]
    assert layer_widths(out.model)["body.0"] == 16


def test_a_pruned_output_is_a_one_line_error_naming_it(segnet):
    import copy

    import torch_pruning as tp

    model, _, _ = segnet
    work = copy.deepcopy(model)
    x = torch.zeros(1, 1, 28, 28)
    before = output_shapes(work, x)
    tp.prune_conv_out_channels(work.net[4], idxs=[1])  # what an untraced head would suffer
    with pytest.raises(ModelError, match=r"pruning changed output 'output' of SegNet from \[1, 2, 28, 28\] to "
                                         r"\[1, 1, 28, 28\]; leave the layer that makes it unpruned with --ignore"):
        check_output_shapes(before, work, x, "SegNet")


def test_contract_path_refuses_finetune_recovery_and_a_missing_contract(segnet):
    model, contract, samples = segnet
    data = InputSet(samples=samples, origin="test")
    with pytest.raises(ConfigError, match="recovers by distillation"):
        prune(_artifact(model, contract), PruneConfig(ratio=0.3, recover="finetune", recover_epochs=1), data=data)
    bare = Artifact(format=Format.TORCH, model=model, input_spec=InputSpec(shape=(1, 28, 28), mean=(0.0,), std=(1.0,)),
                    labels=())
    with pytest.raises(ConfigError, match="needs the model's contract"):
        prune(bare, PruneConfig(ratio=0.3), data=data)


# --------------------------------------------------------------------------- the command line
_ARCHS = {"shapes_segnet": ("SegNet", 1, 28), "shapes_facedet": ("FaceDetLike", 3, 32)}


def register_test_archs() -> None:
    """The test models as zoo architectures, so their pruned checkpoints save and reload without pickled code
    (a user's own architecture comes in with ``--arch module:Class``)."""
    from edgetl.models import ArchSpec, register_arch

    for name, (cls, channels, size) in _ARCHS.items():
        register_arch(ArchSpec(name=name, build=lambda num_classes=0, pretrained=False, _c=cls: getattr(shapes, _c)(),
                               family="test", default_resolution=size, mean=(0.0,) * channels, std=(1.0,) * channels,
                               in_channels=channels))


def _checkpoint(model, arch, path):
    from edgetl.models import save_model

    register_test_archs()
    c, size = _ARCHS[arch][1:]
    art = Artifact(format=Format.TORCH, model=model, arch=arch, labels=(),
                   input_spec=InputSpec(shape=(c, size, size), mean=(0.0,) * c, std=(1.0,) * c))
    return save_model(art, path)


def _cli(*args):
    import subprocess

    code = ("import sys; from tests.test_contract_prune import register_test_archs; register_test_archs(); "
            "from edgetl.cli import main; main()")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def _json(r):
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def test_cli_prunes_the_detector_from_an_npz_and_reports_box_f1(facedet, tmp_path):
    from edgetl.models import load_model

    model, _, samples = facedet
    src = _checkpoint(model, "shapes_facedet", tmp_path / "det.pt")
    np.savez(tmp_path / "det.npz", image=np.concatenate([s["image"] for s in samples]))
    out = tmp_path / "det_small.pt"
    res = _json(_cli("prune", str(src), "--data", str(tmp_path / "det.npz"), "--ratio", "0.3", "--task", "detection",
                     "--role", DET_ROLES[0], "--role", DET_ROLES[1], "--reference-samples", "16", "-o", str(out),
                     "--json"))
    assert res["headline"]["metric"] == "box_f1" and 0.0 <= res["headline"]["value"] <= 1.0
    assert res["fidelity"]["samples"] == res["fidelity_samples"] == 12 and res["samples"] == 60
    assert "val_accuracy_after" not in res and res["params_reduction"] > 0.2
    assert {h: res["widths_after"][h] for h in HEADS} == HEADS
    register_test_archs()
    small = load_model(out).model
    boxes, scores, landmarks = small(torch.zeros(2, 3, 32, 32))
    assert boxes.shape == (2, 16, 4) and scores.shape == (2, 16) and landmarks.shape == (2, 16, 10)
    assert layer_widths(small) == res["widths_after"]


def test_cli_prunes_the_segmenter_from_an_unlabelled_image_folder(segnet, tmp_path):
    from PIL import Image

    model, _, samples = segnet
    src = _checkpoint(model, "shapes_segnet", tmp_path / "seg.pt")
    folder = tmp_path / "tiles"
    folder.mkdir()
    for i, s in enumerate(samples[:30]):
        Image.fromarray((s["image"][0, 0] * 255).round().astype(np.uint8)).save(folder / f"{i:02d}.png")
    out = tmp_path / "seg_small.pt"
    res = _json(_cli("prune", str(src), "--data", str(folder), "--ratio", "0.3", "--task", "segmentation",
                     "--criterion", "lrp", "--round-to", "1", "-o", str(out), "--json"))
    assert res["task"] == "segmentation" and res["headline"]["metric"] == "miou"
    assert res["headline"]["value"] > 0.5 and res["fidelity"]["segmentation"][0]["classes"] == 2
    assert res["widths_after"]["net.4"] == 2 and res["widths_after"]["net.0"] < 12
    assert res["output_shapes"] == {"output": [1, 2, 28, 28]}
    assert res["scoring"][0]["criterion"] == "lrp" and res["scoring"][0]["reference_samples"] == 24


def test_cli_contract_errors_are_one_line_before_work(segnet, tmp_path):
    model, _, samples = segnet
    src = _checkpoint(model, "shapes_segnet", tmp_path / "seg.pt")
    np.savez(tmp_path / "seg.npz", image=np.concatenate([s["image"] for s in samples[:10]]))
    out = tmp_path / "never.pt"
    for args, words in [(["--outputs", "mask"], "output"), (["--recover", "finetune", "--recover-epochs", "1"],
                                                            "recovers by distillation"),
                        (["--input", "image:1x3x28x28"], "image")]:
        r = _cli("prune", str(src), "--data", str(tmp_path / "seg.npz"), "--task", "segmentation", "-o", str(out),
                 *args)
        assert r.returncode == 2, r.stdout + r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r.stderr
        assert not out.exists()


def test_cli_contract_of_a_model_with_an_integer_input_runs_it_on_the_first_sample(tmp_path):
    from edgetl.cli.prune_contract import contract_of

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "vad.npz", audio=rng.standard_normal((5, 1, 256)).astype(np.float32),
             state=np.zeros((5, 2, 1, 32), np.float32), sr=np.full(5, 16000, np.int64))
    model = shapes.VadLike().eval()
    flags = parse_flags(inputs=["audio:Nx256:float32", "state:2xNx32:float32", "sr:scalar:int64"])
    from edgetl.contract import InputTensor, ModelContract

    art = Artifact(format=Format.TORCH, model=model, input_spec=None, labels=(),
                   contract=ModelContract(inputs=(InputTensor("audio"), InputTensor("state"), InputTensor("sr")),
                                          fixed=False))
    with pytest.raises(ConfigError, match="--opt-shape audio"):
        contract_of(art, flags)  # no data: neither a dynamic size nor an integer sample rate is invented
    c = contract_of(art, flags, str(tmp_path / "vad.npz"))
    assert c.output_names == ("output0", "output1") and c.output("output1").shape == (2, 1, 32)
