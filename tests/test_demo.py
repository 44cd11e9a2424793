"""The demo's job list (ingest/demo.py), without running a model: --models picks the models, so
Gemma-3-270M, whose weights are under the Gemma Terms of Use, can be left out."""
import importlib.util
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "ingest" / "demo.py"


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)   # the script's imports (corpus and model helpers), not its main()
    return module


def names(demo, *argv: str) -> list[str]:
    return [j.name for j in demo.jobs(demo.parser().parse_args(list(argv)))]


def test_all_three_models_by_default(demo):
    assert names(demo) == ["smollm2", "minilm", "gemma3"]


def test_models_leaves_gemma3_out(demo):
    assert names(demo, "--models", "smollm2,minilm") == ["smollm2", "minilm"]
    assert names(demo, "--models", " minilm , gemma3") == ["minilm", "gemma3"]   # the demo's order, spaces ignored


def test_decoders_get_the_magnitude_rule_beside_sign(demo):
    rules = {j.name: j.rules for j in demo.jobs(demo.parser().parse_args(["--fire-rule", "top:0.99"]))}
    assert rules["gemma3"] == rules["smollm2"] == ("--fire-rule", "sign", "--fire-rule", "top:0.99")
    assert rules["minilm"] == ()


@pytest.mark.parametrize("option", ["gemma", "smollm2,opt", ","])
def test_models_refuses_a_name_it_does_not_know(demo, option):
    with pytest.raises(SystemExit, match="--models: expected some of smollm2, minilm, gemma3"):
        demo.jobs(demo.parser().parse_args(["--models", option]))
