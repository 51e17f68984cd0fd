"""Safe parser for the constructor string stored in Human3R checkpoints.

The training code stores the model as Python source, e.g.
``ARCroco3DStereo(ARCroco3DStereoConfig(state_size=768, depth_mode=('exp', -inf, inf), ...))``,
and the reference implementation ``eval``s it. A checkpoint is untrusted input, so here the
string is parsed with ``ast`` and only literal values are evaluated: constants, tuples, lists,
unary minus and the bare name ``inf``. Anything else is rejected with the offending text.
"""

from __future__ import annotations

import ast
import math
from typing import Any

MODEL_CLASS = "ARCroco3DStereo"
CONFIG_CLASS = "ARCroco3DStereoConfig"

# Literal types a keyword value may hold (bool is an int subclass and is covered by int).
_CONSTANT_TYPES = (str, int, float, type(None))


def parse_model_string(text: str) -> dict[str, Any]:
    """Return the keyword arguments of ``ARCroco3DStereo(ARCroco3DStereoConfig(**kwargs))``.

    The reference's two rewrites are applied so the result describes the model it actually
    builds: the patch embedding becomes ``PatchEmbedDust3R`` and ``landscape_only`` is False.
    Raises ValueError naming the offending text for anything that is not this exact shape
    with literal keyword values.
    """
    if not isinstance(text, str):
        raise ValueError(f"model string must be a str, got {type(text).__name__}")
    source = text.strip()
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"model string is not valid Python syntax ({exc.msg}): {text!r}") from None

    outer = tree.body
    _expect_call(outer, MODEL_CLASS, source)
    if len(outer.args) != 1 or outer.keywords:
        raise ValueError(
            f"{MODEL_CLASS}(...) must have exactly one positional argument, "
            f"got: {_segment(source, outer)!r}"
        )
    inner = outer.args[0]
    _expect_call(inner, CONFIG_CLASS, source)
    if inner.args:
        raise ValueError(
            f"{CONFIG_CLASS}(...) takes keyword arguments only, got positional "
            f"{_segment(source, inner.args[0])!r}"
        )

    kwargs: dict[str, Any] = {}
    for keyword in inner.keywords:
        if keyword.arg is None:
            raise ValueError(f"'**' expansion is not allowed: {_segment(source, keyword)!r}")
        if keyword.arg in kwargs:
            raise ValueError(f"keyword {keyword.arg!r} given twice in the model string")
        kwargs[keyword.arg] = _literal(keyword.value, source)

    if kwargs.get("patch_embed_cls") == "ManyAR_PatchEmbed":
        kwargs["patch_embed_cls"] = "PatchEmbedDust3R"
    # The reference forces this off whatever the file says; inputs are never transposed.
    kwargs["landscape_only"] = False
    return kwargs


def _expect_call(node: ast.AST, name: str, source: str) -> None:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name):
        raise ValueError(f"expected a call to {name}(...), got: {_segment(source, node)!r}")


def _literal(node: ast.AST, source: str) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, _CONSTANT_TYPES):
        return node.value
    if isinstance(node, ast.Tuple):
        return tuple(_literal(element, source) for element in node.elts)
    if isinstance(node, ast.List):
        return [_literal(element, source) for element in node.elts]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        operand = _literal(node.operand, source)
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand
    elif isinstance(node, ast.Name) and node.id == "inf":
        return math.inf
    raise ValueError(f"unsupported expression in model string: {_segment(source, node)!r}")


def _segment(source: str, node: ast.AST) -> str:
    return ast.get_source_segment(source, node) or ast.dump(node)
