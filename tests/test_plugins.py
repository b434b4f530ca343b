"""The plugin system: built-ins and third-party plugins both come through entry points."""

import json
import os
import subprocess
import sys

import pytest

from emkit import plugins
from emkit.errors import EmkitError
from helpers import run_emkit
from plugin_fixtures import make_plugin

TRAINER_PLUGIN = """
from emkit import hookimpl

class EchoTrainer:
    name = "echo"
    description = "test"
    def train(self, job, on_checkpoint, progress):
        pass

@hookimpl
def register_trainers(register):
    register(EchoTrainer())

@hookimpl
def register_commands(cli):
    @cli.command(name="hello-plugin")
    def hello():
        "Say hello from a plugin."
        print("hello from a plugin")
"""


@pytest.fixture
def fresh_registry(monkeypatch):
    plugins.reset_for_tests()
    yield
    plugins.reset_for_tests()


def test_builtins_come_through_entry_points(fresh_registry):
    registry = plugins.get_registry()
    assert set(registry.names("trainers")) >= {"peft", "unsloth"}
    assert "hf" in registry.names("generators")
    assert set(registry.names("judges")) >= {"litellm", "local"}
    assert set(registry.names("domains")) >= {"medical", "risky-financial", "extreme-sports"}
    assert registry.entries["trainers"]["peft"].plugin == "peft"


def test_plugins_json_lists_each_plugin_with_what_it_provides():
    described = json.loads(run_emkit("plugins", "--json").stdout)
    by_name = {p["name"]: p for p in described}
    assert by_name["peft"]["provides"]["trainers"] == ["peft"]
    assert by_name["domains"]["provides"]["domains"] == ["extreme-sports", "medical", "risky-financial"]
    for plugin in described:
        assert set(plugin["provides"]) >= {"trainers", "generators", "judges", "domains", "question_sets"}


def test_a_third_party_plugin_is_loaded_like_a_builtin(tmp_path, monkeypatch, fresh_registry):
    site = make_plugin(tmp_path / "site", "emkit-echo", "emkit_echo", TRAINER_PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    registry = plugins.get_registry()
    assert registry.entries["trainers"]["echo"].plugin == "emkit-echo"
    described = {p["name"]: p for p in registry.describe_plugins()}
    assert described["emkit-echo"]["provides"]["trainers"] == ["echo"]


def test_emkit_plugins_variable_limits_third_party_plugins(tmp_path, monkeypatch, fresh_registry):
    site = make_plugin(tmp_path / "site", "emkit-echo", "emkit_echo", TRAINER_PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("EMKIT_PLUGINS", "")
    registry = plugins.get_registry()
    assert "echo" not in registry.names("trainers")
    assert "peft" in registry.names("trainers")


def test_a_duplicate_name_names_both_plugins(tmp_path, monkeypatch, fresh_registry):
    code = TRAINER_PLUGIN.replace('name = "echo"', 'name = "peft"')
    site = make_plugin(tmp_path / "site", "emkit-clash", "emkit_clash", code)
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(EmkitError, match=r"both register a trainer named 'peft'") as caught:
        plugins.get_registry()
    assert "'emkit-clash'" in str(caught.value) and "'peft'" in str(caught.value)


def test_a_plugin_that_fails_to_import_is_named(tmp_path, monkeypatch, fresh_registry):
    site = make_plugin(tmp_path / "site", "emkit-broken", "emkit_broken", "import a_module_that_is_not_there\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(EmkitError, match=r"Plugin 'emkit-broken' .*failed to import: ModuleNotFoundError"):
        plugins.get_registry()


def test_a_broken_plugin_is_one_sentence_and_exit_2_on_the_command_line(tmp_path):
    site = make_plugin(tmp_path / "site", "emkit-broken", "emkit_broken", "raise RuntimeError('boom')\n")
    result = run_emkit("plugins", env={"PYTHONPATH": str(site)}, check=False)
    assert result.returncode == 2
    assert "Plugin 'emkit-broken'" in result.stderr and "RuntimeError: boom" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_plugin_names_are_a_sentence(fresh_registry):
    with pytest.raises(EmkitError, match=r"Unknown trainer 'axolotl' \(installed: peft, unsloth\)"):
        plugins.get_registry().get("trainers", "axolotl")


def test_a_plugin_adds_a_command(tmp_path):
    site = make_plugin(tmp_path / "site", "emkit-echo", "emkit_echo", TRAINER_PLUGIN)
    result = run_emkit("hello-plugin", env={"PYTHONPATH": str(site)})
    assert "hello from a plugin" in result.stdout
    assert "hello-plugin" in run_emkit("--help", env={"PYTHONPATH": str(site)}).stdout


EXIT_PLUGIN = """
import atexit, sys

import pluggy

hookimpl = pluggy.HookimplMarker("emkit")


class Cycle:  # garbage only a collection finds; its finalizer says whether one ran
    def __del__(self):
        print("collected at exit", file=sys.stderr, flush=True)


@hookimpl
def register_commands(cli):
    @cli.command(name="leave")
    def leave():
        "End with code 3, an exit handler and a reference cycle behind."
        atexit.register(lambda: print("exit handler ran", file=sys.stderr, flush=True))
        cycle = Cycle()
        cycle.me = cycle
        del cycle
        import gc
        gc.disable()  # keep it for the interpreter's last collection
        print("said before the end")
        sys.exit(3)
"""


def test_emkit_ends_after_the_exit_handlers_without_the_interpreters_last_collection(tmp_path):
    # That collection took 4 to 9 s with torch and litellm loaded, after the results were stored,
    # and made Ctrl-C slow (tests/test_stopping.py). What an exit handler does, a tracker's among
    # them, still happens, and the exit code and everything printed are kept.
    site = make_plugin(tmp_path / "site", "emkit-leave", "emkit_leave", EXIT_PLUGIN)
    result = run_emkit("leave", env={"PYTHONPATH": str(site)}, check=False)
    assert result.returncode == 3, result.stderr
    assert result.stdout == "said before the end\n"
    assert "exit handler ran" in result.stderr
    assert "collected at exit" not in result.stderr


def test_help_and_plugins_do_not_import_torch():
    code = ("import sys\nfrom emkit.cli import main\n"
            "for argv in (['--help'], ['plugins', '--json']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'litellm', 'pandas', 'peft') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr
