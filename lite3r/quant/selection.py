"""Which Linear layers go to FP8: one selection rule shared by QAT and deployment.

QAT must simulate exactly the layers that deployment runs in FP8, so both ``apply_fp8_qat`` and
``apply_fp8_inference`` call :func:`select_linears` with the same ``modules`` (the model's
``trunk_modules()``) and ``skip`` list. By default the SLA linear-branch projection ``proj_lin``
stays in bf16/fp32 in both (method.md Part C2: one policy, applied consistently).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn

DEFAULT_SKIP: tuple[str, ...] = ("proj_lin",)


def resolve_roots(model: nn.Module, modules: Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    """The (qualified name, module) roots to search: ``modules`` by name, or the whole model if None."""
    if modules is None:
        return [("", model)]
    if isinstance(modules, str):
        raise TypeError("modules must be a list of qualified module names, not a single string")
    roots = []
    for name in modules:
        try:
            roots.append((name, model.get_submodule(name)))
        except AttributeError as e:
            raise ValueError(f"model has no submodule {name!r} (from modules={list(modules)})") from e
    return roots


def is_skipped(name: str, skip: Iterable[str]) -> bool:
    """A qualified name is skipped if any skip entry is a substring of it (as in the reference)."""
    return any(s and s in name for s in skip)


def select_linears(
    model: nn.Module, modules: Sequence[str] | None = None, skip: Iterable[str] = DEFAULT_SKIP
) -> tuple[list[str], list[str]]:
    """(selected, skipped): qualified names of the ``nn.Linear`` modules under ``modules``.

    Subclasses of ``nn.Linear`` count (including already fake-quantised ones); duplicates (a module
    reachable from two roots) are listed once.
    """
    skip = tuple(skip)
    selected: list[str] = []
    skipped: list[str] = []
    seen: set[int] = set()
    for root_name, root in resolve_roots(model, modules):
        for sub_name, m in root.named_modules():
            if not isinstance(m, nn.Linear) or id(m) in seen:
                continue
            seen.add(id(m))
            name = f"{root_name}.{sub_name}".strip(".") if sub_name else root_name
            (skipped if is_skipped(name, skip) else selected).append(name)
    return selected, skipped


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at qualified ``name`` (parent attribute assignment keeps the key names)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
