"""The divergence map and accuracy-aware INT8 on graphs built to break: a node whose weights were
multiplied by 10 comes first in the map; a U-Net trained on real pixels with an activation
outlier of 1e4 fails full INT8, and the loop keeps the layer that reads the outlier in FP32."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from broken_int8 import with_activation_outlier, with_weights_times
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.core.errors import AccuracyGateError, SegdeployError
from segdeploy.export.divergence import divergence_map
from segdeploy.export.node_scopes import TORCH_MODULE_KEY, torch_modules

runner = CliRunner()
#: A convolution in the middle of the tiny U-Net's encoder.
CORRUPTED = "down1.1.3"


def node_of_module(model: onnx.ModelProto, module: str) -> str:
    return next(name for name, found in torch_modules(model).items() if found == module)


@pytest.fixture(scope="module")
def corrupted_pair(unet_onnx, tmp_path_factory):
    """The tiny U-Net export and a copy with one conv's weights times 10."""
    folder = tmp_path_factory.mktemp("divergence")
    fp32 = shutil.copy(unet_onnx, folder / "unet.onnx")
    model = onnx.load(fp32)
    node = node_of_module(model, CORRUPTED)
    onnx.save(with_weights_times(model, node, 10.0), folder / "corrupted.onnx")
    return fp32, folder / "corrupted.onnx", node


def images(count: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    sizes = [(48, 80), (64, 32), (32, 48)]
    return [rng.standard_normal((1, 3, *sizes[i % 3]), dtype=np.float32) for i in range(count)]


def test_torch_modules_survive_onnxsim(unet_onnx):
    model = onnx.load(unet_onnx)
    meta = {p.key: p.value for p in model.metadata_props}
    assert int(meta["onnxsim.removed_nodes.count"]) > 0  # onnxsim did rewrite this graph
    tagged = {
        node.name: p.value
        for node in model.graph.node
        for p in node.metadata_props
        if p.key == TORCH_MODULE_KEY
    }
    # onnxsim drops node metadata; the exporter puts the module back on every node by name.
    assert len(tagged) == len(model.graph.node)
    kinds = {node.name: node.op_type for node in model.graph.node}
    relus = {kinds[name]: module for name, module in tagged.items() if kinds[name] == "Relu"}
    assert relus  # a Relu has no weight to name it: only the exporter's scope does
    first_relu = next(n.name for n in model.graph.node if n.op_type == "Relu")
    assert tagged[first_relu] == "inc.2"
    # A Conv with its BatchNorm folded in is named by its conv's weight, not the BatchNorm.
    first_conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    assert tagged[first_conv] == "inc.0"


def test_the_map_puts_a_corrupted_node_first(corrupted_pair):
    fp32, corrupted, node = corrupted_pair
    found = divergence_map(fp32, corrupted, images())
    worst = found.worst(1)[0]
    assert worst.node == node and worst.module == CORRUPTED
    assert worst.relative_error == pytest.approx(9.0, rel=1e-3)  # 10x - 1x
    assert found.first_diverging().node == node
    # Everything before it is exact; everything after inherits its error but adds little: the
    # map tells the node that introduced the error from those downstream of it.
    assert all(n.sqnr_db >= 100 for n in found.nodes if n.depth < worst.depth)
    downstream = [n for n in found.nodes if n.depth > worst.depth]
    assert min(n.sqnr_db for n in downstream) < 0  # they carry the error
    assert max(n.damage_db for n in downstream) < 10  # but did not make it


def test_a_graph_compared_with_itself_has_no_damage(corrupted_pair):
    fp32, _, _ = corrupted_pair
    found = divergence_map(fp32, fp32, images(1))
    assert found.nodes and all(n.damage_db == 0 for n in found.nodes)
    assert found.first_diverging() is None


def test_inspect_divergence_cli_writes_table_json_and_chart(corrupted_pair, tmp_path):
    fp32, corrupted, node = corrupted_pair
    args = ["inspect-divergence", str(fp32), str(corrupted), "--images", "2", "--top", "3"]
    result = runner.invoke(
        app, [*args, "--json", str(tmp_path / "m.json"), "--chart", str(tmp_path / "m.png")]
    )
    assert result.exit_code == 0, result.output
    assert node in result.output and CORRUPTED in result.output
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["worst"][0] == node and len(report["images"]) == 2
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unrelated_graphs_are_one_sentence(corrupted_pair, tmp_path):
    fp32, _, _ = corrupted_pair
    model = onnx.load(fp32)
    for node in model.graph.node:
        node.output[:] = [f"renamed_{o}" if o != "logits" else o for o in node.output]
        node.input[:] = [
            f"renamed_{i}"
            if i.startswith(("relu", "getitem", "max_pool", "cat", "pad", "upsample"))
            else i
            for i in node.input
        ]
    model.graph.output[0].name = "logits"
    other = tmp_path / "other.onnx"
    onnx.save(model, other)
    found = divergence_map(fp32, other, images(1))
    # Only the shared output remains comparable.
    assert {n.tensor for n in found.nodes} <= {"logits", "image"}
    empty = tmp_path / "empty.onnx"
    model.graph.output[0].name = "renamed_logits"
    model.graph.node[-1].output[0] = "renamed_logits"
    model.graph.input[0].name = "picture"
    for node in model.graph.node:
        node.input[:] = ["picture" if i == "image" else i for i in node.input]
    onnx.save(model, empty)
    with pytest.raises(SegdeployError, match="shares no float tensor name"):
        divergence_map(fp32, empty, [])


def test_an_unknown_calibration_method_is_one_sentence(corrupted_pair):
    fp32, _, _ = corrupted_pair
    result = runner.invoke(app, ["quantize", str(fp32), "--calibration", "magic"])
    assert result.exit_code == 1
    assert "calibration method 'magic' is not one of minmax, entropy, percentile, auto" in (
        result.output
    )


# ------------------------------------------------------------------------------------------
# A trained U-Net with an activation outlier: full INT8 fails, the loop finds the layer.
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outlier_unet(texture_set, tmp_path_factory):
    """A tiny U-Net trained on the texture set, and a copy whose first conv's channel 0 is 1e4
    times larger (the second conv compensates: the same function in FP32)."""
    from real_pixels import train_texture_unet

    folder = tmp_path_factory.mktemp("outlier")
    fp32 = train_texture_unet(texture_set, folder, 4)
    model = onnx.load(fp32)
    first, second = (node_of_module(model, m) for m in ("inc.0", "inc.3"))
    broken = folder / "outlier.onnx"
    onnx.save(with_activation_outlier(model, first, second), broken)
    return fp32, broken


@pytest.mark.slow
def test_the_outlier_keeps_fp32_and_breaks_full_int8(outlier_unet, texture_set, tmp_path):
    from segdeploy.export.quantize import quantize_int8
    from segdeploy.runtime import open_model

    fp32, broken = outlier_unet
    same = [
        open_model(p, provider="cpu").logits(np.full((37, 53, 3), 90, np.uint8))
        for p in (fp32, broken)
    ]
    np.testing.assert_allclose(same[0], same[1], atol=1e-3)  # FP32 is unchanged
    with pytest.raises(AccuracyGateError, match="worst nodes on the training images") as err:
        quantize_int8(broken, tmp_path / "full.int8.onnx", samples=16, eval_samples=12)
    assert err.value.divergence.worst(1)[0].module == "inc.3"
    assert "pass --max-fallback N" in str(err.value)
    assert not (tmp_path / "full.int8.onnx").exists()


@pytest.mark.slow
def test_the_loop_keeps_the_outlier_layer_in_fp32_and_passes(outlier_unet, tmp_path):
    from segdeploy.core.artifacts import gate_report_path
    from segdeploy.export.accuracy_aware import FALLBACK_KEY
    from segdeploy.export.quantize import quantize_int8

    _, broken = outlier_unet
    out = tmp_path / "aware.int8.onnx"
    result = quantize_int8(broken, out, samples=16, eval_samples=12, max_fallback=3, min_speedup=0)
    assert result.passed and out.is_file()
    kept = result.fallback.excluded
    assert kept[0]["ranked"] and kept[0]["module"] == "inc.3"  # the layer that reads it
    assert "inc.0" in {entry["module"] for entry in kept}  # and the layer that makes it
    assert len(result.fallback.steps) <= 3
    # Ranked on training images, graded on held-out ones.
    assert result.fallback.ranking_images and not set(result.fallback.ranking_images) & set(
        result.images
    )
    written = onnx.load(out)
    record = json.loads({p.key: p.value for p in written.metadata_props}[FALLBACK_KEY])
    assert [e["node"] for e in record["excluded"]] == [e["node"] for e in kept]
    report = json.loads(gate_report_path(out).read_text())
    assert report["int8_fallback"]["excluded"][0]["module"] == "inc.3"
    assert report["passed"] and "minmax calibration" in report["calibration_data"]
    # The kept node reads FP32 weights: no DequantizeLinear feeds it.
    producers = {o: n for n in written.graph.node for o in n.output}
    node = next(n for n in written.graph.node if n.name == kept[0]["node"])
    assert all(producers[i].op_type != "DequantizeLinear" for i in node.input if i in producers)


def test_a_refused_fp16_file_names_its_worst_nodes(corrupted_pair, tmp_path):
    from segdeploy.export.fp16 import convert_fp16

    fp32, _, _ = corrupted_pair
    with pytest.raises(AccuracyGateError, match="was not written; worst nodes on 4") as err:
        convert_fp16(fp32, tmp_path / "x.fp16.onnx", eval_samples=2, max_drop=-1.0)
    assert err.value.divergence.nodes and err.value.divergence.worst(1)[0].module
    assert not (tmp_path / "x.fp16.onnx").exists()
