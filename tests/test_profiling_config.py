"""The config schema: one place for fields; keys, flags, files, plugins and strategy options derive from it."""

import json
import shutil
import sys
from pathlib import Path

import pytest

import profiling.runner
from profiling import analysis
from profiling.cli import build_parser, main
from profiling.config import GRID_FIELDS, SCHEMA, Config, key_of_row, read_sweep_file
from profiling.sweep import PRESETS, RESULTS, expand, load_results, run_sweep

from .test_profiling_sweep import FakeRunner

ROOT = Path(__file__).resolve().parent.parent


def test_key_names_only_fields_that_differ_from_their_defaults():
    assert Config().key == "defaults"
    assert Config(depth=16, strategy="sqrt_n").key == "depth=16|strategy=sqrt_n"
    assert Config(strategy="sqrt_n", segments=3).key == "strategy=sqrt_n|segments=3"
    assert Config(options={"b": 2, "a": 1}).key == 'options={"a": 1, "b": 2}'
    assert Config.from_dict(Config(options={"a": 1}, fused=True).as_dict()) == Config(options={"a": 1}, fused=True)


def test_a_folder_written_before_the_new_fields_resumes_without_rerunning(tmp_path, monkeypatch):
    old = tmp_path / "old"
    old.mkdir()
    # reports/default as committed before the schema had strategy options (kept as a fixture)
    shutil.copy(ROOT / "tests/data/results_before_config_schema.jsonl", old / RESULTS)
    first = json.loads((old / RESULTS).read_text().splitlines()[0])
    assert "segments" not in first and key_of_row(first) == Config.from_dict(first).key
    runner = FakeRunner()
    monkeypatch.setattr(profiling.runner, "run_config", runner)
    old_grids = PRESETS["default"][:4]                     # the numpy grids that folder holds entirely
    df = run_sweep(old_grids, old, resume=True, progress=False)
    assert runner.ran == []
    assert len(df) == len((old / RESULTS).read_text().splitlines())
    assert set(df["segments"].isna()) == {True} and set(df["options"]) == {""}


def test_every_grid_field_has_a_flag_and_an_analysis_column():
    help_text = build_parser()._subparsers._group_actions[0].choices["sweep"].format_help()
    for name in GRID_FIELDS:
        assert f"--{'option' if name == 'options' else name} " in help_text
    assert analysis.CONFIG == GRID_FIELDS
    assert {"segments", "slots", "budget", "fused", "options"} <= set(GRID_FIELDS)
    assert SCHEMA["fused"].default is False


def test_strategy_options_are_swept_and_reach_the_engine(tmp_path):
    grid = {"depth": 8, "width": 16, "batch": 8, "strategy": "sqrt_n", "segments": [2, 4]}
    assert [c.key for c in expand(grid)] == ["width=16|batch=8|strategy=sqrt_n|segments=2",
                                             "width=16|batch=8|strategy=sqrt_n|segments=4"]
    df = run_sweep([grid], tmp_path, progress=False, iters=1)
    steps = dict(zip(df["segments"], df["forward_steps"]))
    assert steps == {2: 2 * 8 - 4, 4: 2 * 8 - 2}          # 2n − (length of the last segment)


def test_an_option_the_strategy_does_not_take_is_refused():
    with pytest.raises(ValueError, match="strategy 'store_all' does not take"):
        expand({"depth": 4, "strategy": "store_all", "segments": 2})


def readme_strategy_module() -> str:
    """The README's custom-strategy quickstart as a module: its code block, minus the line that trains a model."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quickstart: write a custom strategy"):]
    block = section[section.index("```python") + len("```python"):section.index("```", section.index("```python") + 3)]
    kept = [line for line in block.splitlines() if not line.startswith("ckpt.gradients(")]
    return "import ckpt\n" + "\n".join(kept) + EVERY_K


EVERY_K = '''

def every_k(n, k=2):
    """Not registered: reached as 'myplug:every_k'; k is a user option."""
    return ckpt.make_schedule("sqrt_n", n, segments=max(1, n // k))
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The README's custom strategy in a module of its own, importable here and in children."""
    (tmp_path / "myplug.py").write_text(readme_strategy_module())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    yield "myplug"
    sys.modules.pop("myplug", None)


def test_readme_custom_strategy_runs_as_a_sweep(plugin, tmp_path):
    grid = {"depth": [4, 6], "width": 16, "batch": 8, "strategy": "last_half_stored"}
    df = run_sweep([grid], tmp_path / "out", progress=False, iters=1, plugins=[plugin])
    assert list(df["status"]) == ["ok", "ok"], df["error"].tolist()
    assert dict(zip(df["depth"], df["forward_steps"])) == {4: 4 + 2, 6: 6 + 3}   # n + ⌊n/2⌋


def test_module_function_strategy_with_swept_user_options(plugin, tmp_path):
    grid = {"depth": 8, "width": 16, "batch": 8, "strategy": "myplug:every_k", "options": {"k": [2, 4]}}
    df = run_sweep([grid], tmp_path / "out", progress=False, iters=1)
    assert list(df["status"]) == ["ok", "ok"], df["error"].tolist()
    assert sorted(df["options"]) == ['{"k": 2}', '{"k": 4}']
    assert dict(zip(df["options"], df["forward_steps"])) == {'{"k": 2}': 2 * 8 - 2, '{"k": 4}': 2 * 8 - 4}


def test_plugins_and_options_from_the_command_line(plugin, tmp_path, capsys):
    assert main(["sweep", "--plugin", plugin, "--strategy", "last_half_stored", "myplug:every_k",
                 "--option", "k=2", "--depth", "4", "--dry-run"]) == 2   # last_half_stored takes no k
    assert "does not take" in capsys.readouterr().err
    assert main(["sweep", "--plugin", plugin, "--strategy", "myplug:every_k", "--option", "k=2",
                 "--option", "k=4", "--depth", "8", "--dry-run"]) == 0
    assert "2 configurations" in capsys.readouterr().out


@pytest.mark.parametrize("name, text, words", [
    ("bad.yaml", "grid: [depth: 2\n", "bad.yaml' cannot be parsed"),
    ("five.toml", "grid = 5\n", "five.toml': `grid` must be a table"),
    ("timeout.toml", '[run]\ntimeout = "soon"\n[grid]\ndepth = 2\n', "[run]: timeout must be a number > 0, got 'soon'"),
    ("list.json", "[1, 2]\n", "list.json': expected a table with keys grid, run, plugins, got list"),
    ("lines.json", '{"grid": {"depth": 2}}\n{"grid": {"depth": 3}}\n', "lines.json' cannot be parsed"),
    ("field.toml", "[grid]\nlayers = 2\n", "field.toml': unknown grid field(s) layers; allowed: backend"),
    ("key.toml", "[grids]\ndepth = 2\n", "key.toml': unknown key(s) grids; allowed: grid, run, plugins"),
    ("plugins.toml", 'plugins = "x"\n[grid]\ndepth = 2\n', "`plugins` must be a list of module names"),
])
def test_bad_sweep_files_exit_2_naming_the_file_and_field(tmp_path, capsys, name, text, words):
    f = tmp_path / name
    f.write_text(text)
    assert main(["sweep", "--config", str(f), "--dry-run"]) == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("flag, words", [
    (["--timeout", "-1"], "--timeout: timeout must be a number > 0, got -1.0"),
    (["--repeats", "0"], "--repeats: repeats must be an integer ≥ 1, got 0"),
    (["--threads", "-2"], "--threads: threads must be an integer ≥ 1, got -2"),
    (["--timeout", "soon"], "--timeout"),
    (["--fused", "maybe"], "expected true or false"),
    (["--depth", "two"], "--depth"),
    (["--option", "k"], "expected KEY=VALUE"),
])
def test_bad_flags_exit_2_naming_the_flag(capsys, flag, words, tmp_path):
    assert main(["sweep", "--depth", "2", *flag, "--out", str(tmp_path), "--dry-run"]) == 2
    assert words in capsys.readouterr().err


def test_sweep_files_in_yaml_and_json(tmp_path):
    (tmp_path / "s.yaml").write_text("plugins: []\nrun: {iters: 2}\ngrid:\n  - {depth: [2, 4], segments: 2, strategy: sqrt_n}\n")
    (tmp_path / "s.json").write_text(json.dumps({"run": {"iters": 2}, "grid": [{"depth": [2, 4], "segments": 2,
                                                                               "strategy": "sqrt_n"}]}))
    assert read_sweep_file(tmp_path / "s.yaml") == read_sweep_file(tmp_path / "s.json")
    assert len(expand(read_sweep_file(tmp_path / "s.json")[0])) == 2


def test_load_results_takes_rows_of_old_and_new_shape(tmp_path):
    old = {**{k: v for k, v in Config(depth=4).as_dict().items() if k in analysis.CONFIG[:9] + ["repeat"]},
           "status": "ok", "key": "backend=numpy|...old format"}
    new = {**Config(depth=4, segments=2, strategy="sqrt_n").as_dict(), "status": "ok"}
    (tmp_path / RESULTS).write_text(json.dumps(old) + "\n" + json.dumps(new) + "\n")
    df = load_results(tmp_path)
    assert list(df["key"]) == ["depth=4", "depth=4|strategy=sqrt_n|segments=2"]
