"""Which pathway of the UNet each parameter belongs to, as its modules declare it (EMO.md §3).

A training stage trains pathways by name (`backbone.temporal`, ...), so membership is declared where a
layer is built, never guessed from parameter names: a module class sets `pathway = "..."` for all of
its parameters, and a plain torch layer is tagged with `on_pathway` when it is created. A parameter
takes the pathway of its nearest declaring module; one with none is an error, so a new layer cannot
silently fall into some stage's trainable set.
"""

from __future__ import annotations

from torch import nn

PATHWAYS = ("spatial", "temporal", "audio", "speed")


def on_pathway(pathway: str, module: nn.Module) -> nn.Module:
    """Declare that ``module``'s parameters belong to ``pathway`` (overrides its ancestors'); returns it."""
    if pathway not in PATHWAYS:
        raise ValueError(f"unknown pathway {pathway!r}; known: {', '.join(PATHWAYS)}")
    module.pathway = pathway
    return module


def parameter_pathways(model: nn.Module) -> dict[str, str]:
    """Parameter name -> pathway, in `named_parameters()` order; ValueError naming an undeclared one."""
    found: dict[str, str] = {}

    def visit(module: nn.Module, prefix: str, inherited: str | None) -> None:
        pathway = getattr(module, "pathway", None) or inherited
        for name, _ in module.named_parameters(prefix=prefix.rstrip("."), recurse=False):
            if pathway is None:
                raise ValueError(
                    f"parameter {name} belongs to no pathway: declare one on its module "
                    "(a `pathway` class attribute or emo.models.pathways.on_pathway)"
                )
            found[name] = pathway
        for child_name, child in module.named_children():
            visit(child, f"{prefix}{child_name}.", pathway)

    visit(model, "", None)
    # Shared parameters are listed once, under their first name, as named_parameters() does.
    return {name: found[name] for name, _ in model.named_parameters()}
