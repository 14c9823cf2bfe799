"""Which torch module each ONNX node came from, kept through onnxsim. Torch-free.

torch's dynamo exporter writes, on every node, ``metadata_props`` such as
``pkg.torch.onnx.name_scopes`` (``['', 'inc', 'inc.1', '_native_batch_norm...']``: the module
path, then the op) and ``pkg.torch.onnx.class_hierarchy``; onnxsim drops every node's
``metadata_props`` but keeps node names. So before simplifying, :func:`tag_torch_modules` writes
one short key per node (:data:`TORCH_MODULE_KEY`, e.g. ``"inc.0"``), and
:func:`copy_torch_modules` puts it back on the simplified nodes by name.

A Conv with a BatchNorm folded into it carries the BatchNorm's scope (``inc.1``) but keeps the
conv's weight name (``inc.0.weight``): the weight's module names it, the scope everything else.
"""

from __future__ import annotations

import ast

import onnx

#: Node ``metadata_props`` key of the torch module path a node was exported from.
TORCH_MODULE_KEY = "segdeploy.torch_module"
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"


def _props(node: onnx.NodeProto) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def module_of(node: onnx.NodeProto, initializers: set[str]) -> str:
    """The torch module path of ``node`` (``""`` when nothing says): its own key, else the
    module of its ``.weight`` initializer, else the deepest module of its exporter scope."""
    props = _props(node)
    if props.get(TORCH_MODULE_KEY):
        return props[TORCH_MODULE_KEY]
    for name in node.input[1:]:
        if name in initializers and name.endswith(".weight"):
            return name[: -len(".weight")]
    try:
        scopes = ast.literal_eval(props.get(_SCOPES_KEY, "[]"))
    except (ValueError, SyntaxError):
        return ""
    # The last entry is the op itself; the one before it the innermost module.
    modules = [s for s in scopes[:-1] if s]
    return modules[-1] if modules else ""


def torch_modules(model: onnx.ModelProto) -> dict[str, str]:
    """``{node name: torch module path}`` for every node of ``model`` that has one."""
    initializers = {init.name for init in model.graph.initializer}
    found = {node.name: module_of(node, initializers) for node in model.graph.node}
    return {name: module for name, module in found.items() if module}


def _set(node: onnx.NodeProto, value: str) -> None:
    kept = [p for p in node.metadata_props if p.key != TORCH_MODULE_KEY]
    del node.metadata_props[:]
    node.metadata_props.extend(kept)
    entry = node.metadata_props.add()
    entry.key, entry.value = TORCH_MODULE_KEY, value


def tag_torch_modules(model: onnx.ModelProto) -> None:
    """Write :data:`TORCH_MODULE_KEY` on every node whose module is known (in place)."""
    modules = torch_modules(model)
    for node in model.graph.node:
        if node.name in modules:
            _set(node, modules[node.name])


def copy_torch_modules(source: onnx.ModelProto, target: onnx.ModelProto) -> int:
    """Copy :data:`TORCH_MODULE_KEY` from ``source``'s nodes to ``target``'s of the same name
    (in place); returns how many nodes got one."""
    modules = torch_modules(source)
    copied = 0
    for node in target.graph.node:
        if node.name in modules:
            _set(node, modules[node.name])
            copied += 1
    return copied
