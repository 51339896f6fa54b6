"""cli/source_commands.py: a command per target from a model-source function and its group's
shared options, declared once; the option order of every validate and embed command's help."""

from __future__ import annotations

from typing import Annotated

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from fp16guard.core.config import ModelSource
from fp16guard_cli.main import app
from fp16guard_cli.source_commands import SOURCE, SourceCommands, command_parameters

NameOption = Annotated[str, typer.Option("--name")]
CountOption = Annotated[int, typer.Option("--count", help="How many.")]
OtherCountOption = Annotated[int, typer.Option("--count", help="How many, counted otherwise.")]
FlagOption = Annotated[bool, typer.Option("--flag")]
OfflineOption = Annotated[bool, typer.Option("--offline")]


def shared(*, model=SOURCE, count: CountOption = 3, pooling=SOURCE, flag: FlagOption = False, offline=SOURCE) -> None:
    """Shared options with three slots."""


def named(model: NameOption = "m", offline: OfflineOption = False) -> ModelSource:
    return ModelSource(model=model, offline=offline)


def test_source_parameters_fill_their_slots_and_empty_slots_go():
    params = command_parameters(named, shared, {})
    assert [p.name for p in params] == ["model", "count", "flag", "offline"]
    assert all(p.kind is p.KEYWORD_ONLY for p in params)
    assert params[0].default == "m" and params[1].default == 3


def test_an_override_replaces_a_shared_options_annotation_and_keeps_its_default():
    params = {p.name: p for p in command_parameters(named, shared, {"count": OtherCountOption})}
    assert params["count"].annotation is OtherCountOption and params["count"].default == 3


def test_a_source_parameter_without_a_slot_or_an_override_of_nothing_is_refused():
    def unplaced(weights: NameOption = "w") -> ModelSource:
        return ModelSource(weights=weights)

    with pytest.raises(TypeError, match="weights"):
        command_parameters(unplaced, shared, {})
    with pytest.raises(TypeError, match="colour"):
        command_parameters(named, shared, {"colour": CountOption})
    with pytest.raises(TypeError, match="model"):  # a slot is no shared option
        command_parameters(named, shared, {"model": NameOption})


def test_a_command_hands_the_source_and_the_shared_options_to_run():
    calls = []
    group = typer.Typer()
    SourceCommands(group, shared, lambda target, source, **options: calls.append((target, source, options)), "END").add(
        "tgt", named, "Do it."
    )
    group.command("other")(lambda: None)  # a second command, so that the group keeps TARGET as a subcommand
    result = CliRunner().invoke(group, ["tgt", "--name", "x", "--count", "5", "--offline"])
    assert result.exit_code == 0, result.output
    assert calls == [("tgt", ModelSource(model="x", offline=True), {"count": 5, "flag": False})]
    help_text = CliRunner().invoke(group, ["tgt", "--help"], env={"COLUMNS": "200"}).output
    assert "Do it." in help_text and "END" in help_text


def _options(group: str, target: str) -> list[str]:
    command = get_command(app).commands[group].commands[target]
    return [param.name for param in command.params if param.name != "help"]


def test_model_source_options_stand_where_the_help_has_always_shown_them():
    assert _options("validate", "esm2")[:4] == ["model", "weights", "sequences", "device"]
    assert _options("validate", "hf")[:5] == ["model", "sequences", "pooling", "trust_remote_code", "device"]
    assert _options("validate", "dnabert")[:4] == ["model", "sequences", "trust_remote_code", "device"]
    assert _options("validate", "antiberty")[:3] == ["sequences", "pooling", "device"]
    for target in ("esm2", "hf", "dnabert"):
        assert _options("validate", target)[-2:] == ["debug", "offline"]
    assert _options("validate", "antiberty")[-1] == "debug"
    assert _options("embed", "esm2")[:4] == ["model", "weights", "offline", "sequences"]
    assert _options("embed", "hf")[:5] == ["model", "pooling", "trust_remote_code", "offline", "sequences"]
    assert _options("embed", "dnabert")[:4] == ["model", "trust_remote_code", "offline", "sequences"]
    assert _options("embed", "antiberty")[:2] == ["pooling", "sequences"]


def test_only_dnabert_counts_max_length_in_tokens():
    def max_length_help(target: str) -> str:
        command = get_command(app).commands["validate"].commands[target]
        return next(p.help for p in command.params if p.name == "max_length")

    assert "tokens" in max_length_help("dnabert")
    assert all("residues" in max_length_help(target) for target in ("esm2", "hf", "antiberty"))


def test_shared_options_are_declared_once():
    # Each shared option's help comes from one declaration: the same in every target's command.
    for group in ("validate", "embed"):
        helps: dict[str, set] = {}
        for target in ("esm2", "hf", "dnabert", "antiberty"):
            for param in get_command(app).commands[group].commands[target].params:
                if param.name not in ("model", "trust_remote_code", "max_length"):
                    helps.setdefault(param.name, set()).add(param.help)
        assert all(len(texts) == 1 for texts in helps.values()), {k: v for k, v in helps.items() if len(v) > 1}

