"""A layer-wise divergence map: where a candidate graph (INT8, FP16, an edited copy) departs from
its FP32 reference, node by node, and which torch module each node came from. Torch-free.

Both graphs run on the same images (each at its own size, under the card's input contract) with
every float tensor they share by name added as a graph output. For a QDQ candidate the value
read is the one after its QuantizeLinear/DequantizeLinear pair (``<name>_DequantizeLinear_Output``,
the naming of ONNX Runtime's quantiser and of its ``qdq_loss_debug.create_activation_matching``),
so a tensor's error includes its own rounding. Like ``qdq_loss_debug.collect_activations`` both
sessions run with graph optimisations off, so no exposed tensor is fused away; unlike it, the
statistics are accumulated image by image instead of keeping every activation in memory.

Per tensor: SQNR in dB (``10 log10(sum ref^2 / sum (ref - cand)^2)`` pooled over the images,
``qdq_loss_debug.compute_signal_to_quantization_noice_ratio``'s definition), relative error and
the largest absolute difference. SQNR is *cumulative*: a tensor carries every error made upstream.
A node's **damage** is what it adds: ``damage_db``, the SQNR of its worst float input minus the
SQNR of its output (weights and constants count as exact), and ``added_noise``, the same as a
noise-to-signal power ratio (``10^(-out/10) - 10^(-in/10)``). Nodes are ranked by
``added_noise``: dB differences are not comparable across levels (120 -> 40 dB adds less noise
than 35 -> 32 dB), noise powers are. Sorting by damage puts the node that introduced an error
first, not the ones downstream that inherit it. The graph input is an entry of its own (op
``Input``): a QDQ graph rounds the image too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from segdeploy.core.errors import SegdeployError
from segdeploy.export.node_scopes import torch_modules

#: An exact match has infinite SQNR; it is reported as this (float32 rounding is ~150 dB).
MAX_SQNR_DB = 120.0
#: Below this SQNR a tensor counts as diverged (:meth:`DivergenceMap.first_diverging`): 40 dB is
#: a relative error of 1 %.
DIVERGED_DB = 40.0
#: Images the map runs by default.
DEFAULT_MAP_IMAGES = 8
#: ONNX Runtime's quantiser names the dequantised copy of tensor ``x`` ``x`` + this.
DEQUANT_OUTPUT_SUFFIX = "_DequantizeLinear_Output"
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


@dataclass
class NodeDivergence:
    """One reference node's output compared with the candidate's tensor of the same name."""

    tensor: str
    node: str
    op_type: str
    module: str
    depth: int
    sqnr_db: float
    relative_error: float
    max_abs_error: float
    damage_db: float = 0.0
    added_noise: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DivergenceMap:
    """Every shared tensor's divergence, in the reference graph's (topological) order."""

    reference: str
    candidate: str
    images: list[str]
    nodes: list[NodeDivergence] = field(default_factory=list)

    def worst(self, count: int | None = None) -> list[NodeDivergence]:
        """Nodes sorted by the noise they add (then by lowest SQNR), worst first."""
        ranked = sorted(self.nodes, key=lambda n: (-n.added_noise, n.sqnr_db, n.depth))
        return ranked[:count] if count is not None else ranked

    def first_diverging(self, threshold_db: float = DIVERGED_DB) -> NodeDivergence | None:
        """The first node in graph order whose output SQNR is below ``threshold_db``."""
        return next((n for n in self.nodes if n.sqnr_db < threshold_db), None)

    def summary(self, count: int = 5) -> str:
        """``count`` worst nodes in one line, for error messages."""
        parts = [
            f"{n.node} ({n.op_type}, {n.module or 'module unknown'}): SQNR {n.sqnr_db:.1f} dB, "
            f"loses {n.damage_db:.1f} dB there"
            for n in self.worst(count)
        ]
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "images": self.images,
            "max_sqnr_db": MAX_SQNR_DB,
            "nodes": [n.to_dict() for n in self.nodes],
            "worst": [n.node for n in self.worst(10)],
        }

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def chart(self, path: str | Path, title: str | None = None) -> Path:
        """SQNR along the network's depth (matplotlib PNG), the five worst nodes labelled."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
        depths = [n.depth for n in self.nodes]
        ax.plot(depths, [n.sqnr_db for n in self.nodes], marker=".", lw=1, label="SQNR (dB)")
        ax.bar(
            depths,
            [n.damage_db for n in self.nodes],
            color="tab:red",
            alpha=0.5,
            label="added by the node (dB)",
        )
        for node in self.worst(5):
            ax.annotate(
                node.module or node.node,
                (node.depth, node.sqnr_db),
                fontsize=7,
                rotation=30,
                xytext=(3, 6),
                textcoords="offset points",
            )
        ax.axhline(DIVERGED_DB, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("node index in the reference graph (input -> output)")
        ax.set_ylabel("dB")
        ax.set_title(title or f"{Path(self.candidate).name} against {Path(self.reference).name}")
        ax.legend(loc="lower left", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path


def _float_tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """``{tensor: elem_type}`` of every float graph input and tensor a node produces."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # an op onnx cannot infer: fall back to what the file declares
        inferred = model
    graph = inferred.graph
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in [*graph.value_info, *graph.output, *graph.input]
    }
    produced = {out for node in graph.node for out in node.output if out}
    produced |= {vi.name for vi in graph.input}
    return {name: t for name, t in types.items() if name in produced and t in _FLOAT_TYPES}


def _expose(model: onnx.ModelProto, tensors: dict[str, int]) -> bytes:
    """``model`` with ``tensors`` added as graph outputs (rank left open), serialised."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    for name, elem_type in tensors.items():
        if name not in present:
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, None))
    return exposed.SerializeToString()


def _session(model_bytes: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


@dataclass
class _Sums:
    signal: float = 0.0
    noise: float = 0.0
    max_abs: float = 0.0

    def add(self, ref: np.ndarray, cand: np.ndarray) -> None:
        ref = ref.astype(np.float64, copy=False)
        diff = ref - cand.astype(np.float64, copy=False)
        self.signal += float(np.sum(ref * ref))
        self.noise += float(np.sum(diff * diff))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))) if diff.size else 0.0)

    def sqnr_db(self) -> float:
        if self.noise <= 0.0 or not math.isfinite(self.noise):
            return MAX_SQNR_DB if self.noise == 0.0 else -MAX_SQNR_DB
        if self.signal <= 0.0:
            return -MAX_SQNR_DB
        return float(np.clip(10 * math.log10(self.signal / self.noise), -MAX_SQNR_DB, MAX_SQNR_DB))

    def relative_error(self) -> float:
        return math.sqrt(self.noise / self.signal) if self.signal > 0 else math.inf


def divergence_map(
    reference: str | Path,
    candidate: str | Path,
    inputs: Iterable[np.ndarray],
    image_names: list[str] | None = None,
    modules_from: onnx.ModelProto | None = None,
) -> DivergenceMap:
    """Compare every tensor ``reference`` and ``candidate`` share by name, on ``inputs``.

    Args:
        reference, candidate: ONNX files with the same input (the candidate may be a QDQ graph).
        inputs: model inputs, one ``(1, C, H, W)`` float32 array per image (any sizes).
        image_names: what the inputs are, for the report.
        modules_from: where to read each node's torch module (default: ``reference``), e.g. the
            FP32 export when ``reference`` is its pre-processed copy.

    Raises:
        SegdeployError: the two graphs share no float tensor by name.
    """
    ref_model, cand_model = onnx.load(reference), onnx.load(candidate)
    ref_types, cand_types = _float_tensor_types(ref_model), _float_tensor_types(cand_model)
    # The candidate's value of each shared tensor: after its Q/DQ pair when it has one.
    reads = {}
    for name in ref_types:
        dequantised = name + DEQUANT_OUTPUT_SUFFIX
        if dequantised in cand_types:
            reads[name] = dequantised
        elif name in cand_types:
            reads[name] = name
    if not reads:
        raise SegdeployError(
            f"{candidate} shares no float tensor name with {reference}; a divergence map "
            "compares graphs made from the same export"
        )
    ref_session = _session(_expose(ref_model, {n: ref_types[n] for n in reads}))
    wanted = {reads[n]: cand_types[reads[n]] for n in reads}
    cand_session = _session(_expose(cand_model, wanted))
    input_name = ref_session.get_inputs()[0].name
    ref_names = list(reads)
    cand_names = [reads[n] for n in ref_names]
    sums = {name: _Sums() for name in ref_names}
    count = 0
    for x in inputs:
        ref_values = ref_session.run(ref_names, {input_name: x})
        cand_values = cand_session.run(cand_names, {input_name: x})
        for name, ref, cand in zip(ref_names, ref_values, cand_values, strict=True):
            if ref.shape == cand.shape:
                sums[name].add(ref, cand)
        count += 1
    names = image_names if image_names is not None else [f"input {i}" for i in range(count)]
    result = DivergenceMap(str(reference), str(candidate), names)
    result.nodes = _nodes(ref_model, cand_model, sums, torch_modules(modules_from or ref_model))
    return result


def _nodes(
    model: onnx.ModelProto,
    candidate: onnx.ModelProto,
    sums: dict[str, _Sums],
    modules: dict[str, str],
) -> list[NodeDivergence]:
    """One entry per compared tensor, in the reference graph's order.

    A tensor is credited to the candidate's node that produces it: ONNX Runtime's quantiser
    removes a Relu after a Conv and lets the Conv produce the Relu's output, so the node to
    keep in FP32 is that Conv. Tensors that were not compared pass on the SQNR of their inputs.
    """
    producers = {out: node for node in candidate.graph.node for out in node.output}
    known: dict[str, float] = {}  # tensor -> SQNR (measured, or inherited from its inputs)
    found = []
    for graph_input in model.graph.input:
        if graph_input.name in sums and sums[graph_input.name].signal > 0:
            known[graph_input.name] = sums[graph_input.name].sqnr_db()
            found.append(
                _entry(
                    graph_input.name,
                    graph_input.name,
                    "Input",
                    "(input)",
                    -1,
                    sums[graph_input.name],
                    MAX_SQNR_DB,
                )
            )
    for depth, node in enumerate(model.graph.node):
        # Inputs that are graph inputs, weights or constants are exact: MAX_SQNR_DB.
        before = min((known[i] for i in node.input if i in known), default=MAX_SQNR_DB)
        for output in node.output:
            known[output] = before
        output = next((o for o in node.output if o in sums), None)
        if output is None or (sums[output].signal == 0.0 and sums[output].noise == 0.0):
            continue
        known[output] = sums[output].sqnr_db()
        producer = producers.get(output, node)
        module = modules.get(producer.name) or modules.get(node.name, "")
        found.append(
            _entry(output, producer.name, producer.op_type, module, depth, sums[output], before)
        )
    return found


def _entry(
    tensor: str, node: str, op_type: str, module: str, depth: int, sums: _Sums, before: float
) -> NodeDivergence:
    sqnr = sums.sqnr_db()
    return NodeDivergence(
        tensor=tensor,
        node=node,
        op_type=op_type,
        module=module,
        depth=depth,
        sqnr_db=round(sqnr, 3),
        relative_error=sums.relative_error(),
        max_abs_error=sums.max_abs,
        damage_db=round(max(0.0, before - sqnr), 3),
        added_noise=max(0.0, 10 ** (-sqnr / 10) - 10 ** (-before / 10)),
    )


def inspect_divergence(
    reference: str | Path,
    candidate: str | Path,
    data: str | None = None,
    images: int = DEFAULT_MAP_IMAGES,
    split: str = "val",
) -> DivergenceMap:
    """:func:`divergence_map` on ``images`` labelled images of ``data``'s ``split``, each at its
    own size under the reference's card (as ``predict`` feeds it); ``data`` defaults to what
    the card says the model was trained on (:func:`~segdeploy.export.training_data.choose_data`).

    Raises:
        SegdeployError: unreadable files, data or a graph pair with nothing in common.
    """
    # Imported here: quantize imports this module for its refusal message.
    from segdeploy.export.accuracy_gate import load_split
    from segdeploy.export.onnx_file import load_onnx, read_card
    from segdeploy.export.quantize import model_inputs
    from segdeploy.export.training_data import choose_data

    card = read_card(load_onnx(reference), str(reference))
    load_onnx(candidate)  # one sentence for a missing or unreadable candidate
    chosen = choose_data(card, data, reference, option="--data")
    sample = load_split(card, chosen.source, split, images, chosen.seed)
    return divergence_map(reference, candidate, model_inputs(card, sample.images), sample.names)


def explain_refusal(
    refused: Any,
    fp32_path: str | Path,
    variant: onnx.ModelProto | None,
    data: str | None,
    images: int = 4,
) -> Any:
    """``refused`` (an :class:`~segdeploy.core.errors.AccuracyGateError`) with the five worst
    nodes of ``variant`` against ``fp32_path`` appended, measured on the first ``images``
    validation images of the gate's data; ``.divergence`` holds the map. ``refused`` itself
    when there is no variant to compare."""
    import tempfile

    from segdeploy.core.errors import AccuracyGateError

    if variant is None:
        return refused
    with tempfile.TemporaryDirectory(prefix="segdeploy-map-") as tmp:
        candidate = Path(tmp) / "variant.onnx"
        onnx.save(variant, candidate)
        found = inspect_divergence(fp32_path, candidate, data, images)
    error = AccuracyGateError(
        f"{refused}; worst nodes on {len(found.images)} of its images: {found.summary(5)}",
        refused.result,
    )
    error.divergence = found  # type: ignore[attr-defined]
    return error
