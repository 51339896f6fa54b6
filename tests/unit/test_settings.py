"""The config file: where it is found, what it may hold, and errors that name the key and the file."""

from __future__ import annotations

import pytest

from fp16guard.errors import InputError
from fp16guard.io.config_file import KEYS, discover, find_config, load_config, option_name


def write(path, text):
    path.write_text(text)
    return path


def test_fp16guard_toml_is_read_with_paths_relative_to_its_directory(tmp_path):
    write(tmp_path / "fp16guard.toml",
          'target = "esm2"\nweights = "m/model.pt"\nmin-cosine = 1\ntry = ["bf16"]\nmax-tokens = "auto"\n')
    config = discover(tmp_path)
    assert config.path == tmp_path / "fp16guard.toml"
    assert config.target == "esm2"
    assert config.values["weights"] == str(tmp_path / "m" / "model.pt")
    assert config.options() == {
        "weights": str(tmp_path / "m" / "model.pt"), "min_cosine": 1, "also_try": ["bf16"], "max_tokens": "auto",
    }
    assert config.source == f"config:{tmp_path / 'fp16guard.toml'}"


def test_pyproject_is_read_only_with_a_tool_fp16guard_table(tmp_path):
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')
    assert find_config(tmp_path) is None and discover(tmp_path).values == {}
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n[tool.fp16guard]\ndevice = "cpu"\n')
    assert discover(tmp_path).values == {"device": "cpu"}
    # fp16guard.toml wins over pyproject.toml, as a tool's own file does.
    write(tmp_path / "fp16guard.toml", 'device = "cuda"\n')
    assert discover(tmp_path).values == {"device": "cuda"}


@pytest.mark.parametrize(
    "text, words",
    [
        ("min_cosine = 0.9\n", ["unknown key 'min_cosine'", "did you mean 'min-cosine'"]),
        ("colour = 1\n", ["unknown key 'colour'", "known keys:"]),
        ('min-cosine = "high"\n', ["min-cosine must be a number, not", "'high'"]),
        ("min-cosine = true\n", ["min-cosine must be", "True"]),  # a TOML boolean is no number
        ("gpus = 1.5\n", ["gpus must be an integer"]),
        ("profile = 1\n", ["profile must be true or false"]),
        ("try = [1]\n", ["try must be a list of strings"]),
        ('target = "bert"\n', ["target must be one of esm2, hf, dnabert, antiberty"]),
        ("min-cosine = \n", ["is not valid TOML"]),
    ],
)
def test_a_bad_key_or_value_is_an_input_error_naming_the_file(tmp_path, text, words):
    path = write(tmp_path / "fp16guard.toml", text)
    with pytest.raises(InputError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message and caught.value.exit_code == 2
    for word in words:
        assert word in message


def test_pyproject_errors_name_the_table(tmp_path):
    write(tmp_path / "pyproject.toml", "[tool.fp16guard]\nsequence = 'a.fasta'\n")
    expected = r"pyproject.toml \[tool.fp16guard\]: unknown key 'sequence' \(did you mean 'sequences'\?\)"
    with pytest.raises(InputError, match=expected):
        discover(tmp_path)


def test_every_key_fills_an_option_of_validate():
    """A key added here must be an option of the validate commands (and the other way round)."""
    from typer.main import get_command

    from fp16guard_cli.main import validate_app

    group = get_command(validate_app)
    options = {p.name for name in group.commands for p in group.commands[name].params}
    assert {option_name(key) for key in KEYS if key != "target"} == options - {"quiet", "as_json", "debug", "ctx"}
