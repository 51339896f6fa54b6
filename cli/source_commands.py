"""Commands assembled from a target's model-source function and its group's shared options:
each option is declared once, and one mechanism builds every validate and embed command."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import typer

from fp16guard.core.config import ModelSource
from fp16guard_cli.app import Command


class _SourceSlot:
    """The type of SOURCE."""

    def __repr__(self) -> str:
        return "SOURCE"


#: The default that marks a parameter of a group's shared options as the place, in the command's
#: option order, of the model-source option of that name (left out for a target without it).
SOURCE = _SourceSlot()


def command_parameters(
    source: Callable[..., ModelSource], options: Callable[..., None], overrides: dict[str, object]
) -> list[inspect.Parameter]:
    """A command's parameters: ``options``' parameters in their order, each SOURCE slot filled by
    ``source``'s parameter of that name or dropped, and each shared option named in
    ``overrides`` under that annotation instead (its own help, the same default). TypeError for a
    source parameter without a slot or an override of no shared option."""
    own = inspect.signature(source, eval_str=True).parameters
    shared = inspect.signature(options, eval_str=True).parameters
    slots = {name for name, param in shared.items() if param.default is SOURCE}
    unplaced, unknown = set(own) - slots, set(overrides) - (set(shared) - slots)
    if unplaced:
        raise TypeError(f"{source.__name__}: {sorted(unplaced)} have no SOURCE slot in {options.__name__}")
    if unknown:
        raise TypeError(f"{sorted(unknown)} override no shared option of {options.__name__}")
    params = [
        own[name] if name in slots else param.replace(annotation=overrides.get(name, param.annotation))
        for name, param in shared.items()
        if name in own or name not in slots
    ]
    return [param.replace(kind=inspect.Parameter.KEYWORD_ONLY) for param in params]


@dataclass(frozen=True)
class SourceCommands:
    """One command group's way of building a command per target: ``options`` declares the
    options every command of ``group`` shares (its body is never run; SOURCE defaults place the
    model-source options among them), and ``run(target, source, **shared)`` does the work."""

    group: typer.Typer
    options: Callable[..., None]
    run: Callable[..., None]
    epilog: str

    def add(
        self, target: str, source: Callable[..., ModelSource], help: str, overrides: dict[str, object] | None = None
    ) -> None:
        """Register ``TARGET`` on the group: ``source``'s parameters are its model-source options
        and its help is ``help``."""
        params = command_parameters(source, self.options, overrides or {})
        source_names = tuple(inspect.signature(source).parameters)

        def command(**values) -> None:
            model_source = source(**{name: values.pop(name) for name in source_names})
            self.run(target, model_source, **values)

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {param.name: param.annotation for param in params}
        command.__doc__, command.__name__ = help, target
        self.group.command(target, epilog=self.epilog, cls=Command)(command)
