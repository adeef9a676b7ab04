"""reprkit as a user installs it: a light import, extras that fail with the one line that fixes
them, and declared dependency ranges rather than pins."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_import_and_help_load_neither_torch_nor_transformers():
    done = _run("import sys, reprkit\n"
                "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'import reprkit'\n"
                "from reprkit.cli import main\n"
                "for argv in (['--help'], ['train', '--help'], ['compare', '--help']):\n"
                "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
                "    assert 'torch' not in sys.modules, argv\n"
                "import torch\nprint(reprkit.cosine.__module__, float(reprkit.cosine(torch.ones(3), torch.ones(3))))")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("reprkit.geometry 1.0")  # a name, imported on first use


BLOCK = "import sys\nfor m in ('plotly', 'streamlit', 'sklearn', 'bitsandbytes'):\n    sys.modules[m] = None\n"


def test_reprkit_works_without_any_extra_and_each_feature_names_its_extra():
    done = _run(BLOCK + "import reprkit, reprkit.cli, reprkit.compare, reprkit.directions, reprkit.models, reprkit.train\n"
                "from reprkit.extras import MissingExtra\n"
                "from reprkit.models import quantization_config\n"
                "import torch\n"
                "for call in (lambda: __import__('reprkit.app.figures'), lambda: quantization_config('4bit', torch.float32)):\n"
                "    try:\n        call()\n    except MissingExtra as err:\n        print(err)\n")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines == ["plotly figures needs plotly, which is not installed: pip install 'reprkit[figures]'",
                     "4-bit and 8-bit bases needs bitsandbytes, which is not installed: pip install 'reprkit[quantized]'"]


def test_the_probe_and_the_dashboard_name_their_extras():
    done = _run(BLOCK + "import torch\nfrom reprkit.directions import direction_from_states\n"
                "from reprkit.extras import MissingExtra\n"
                "try:\n    direction_from_states(torch.ones(4, 3), torch.zeros(4, 3), 'probe')\n"
                "except MissingExtra as err:\n    print(err)\n")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "the probe direction (method='probe') needs sklearn, which is not installed: pip install 'reprkit[probe]'"
    cli = _run(BLOCK + "import importlib.util\nreal = importlib.util.find_spec\n"
               "importlib.util.find_spec = lambda name, *a: None if name == 'streamlit' else real(name, *a)\n"
               "from reprkit.cli import main\nmain(['dashboard', 'runs'])")
    assert cli.returncode == 2
    assert cli.stderr.splitlines()[0] == ("reprkit: error: the dashboard needs streamlit, which is not installed: "
                                          "pip install 'reprkit[dashboard]'")


def test_dependencies_are_ranges_and_the_extras_hold_the_optional_parts():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = meta["dependencies"]
    assert not [d for d in deps if "==" in d], "the library pins nothing (the Makefile pins this machine's torch)"
    names = {d.split(">")[0].split("<")[0].split("=")[0].strip() for d in deps}
    assert {"torch", "transformers", "peft", "datasets", "accelerate"} <= names
    assert not names & {"streamlit", "plotly", "bitsandbytes", "scikit-learn", "kaleido"}, "optional parts are extras"
    extras = meta["optional-dependencies"]
    assert any(d.startswith("streamlit") for d in extras["dashboard"]) and any(d.startswith("bitsandbytes") for d in extras["quantized"])
    assert any(d.startswith("scikit-learn") for d in extras["probe"])


def test_the_front_door_exports_the_entry_points_and_train_is_callable_either_way():
    done = _run("import reprkit, sys\n"
                "names = ['capture', 'load_model', 'Direction', 'from_pairs', 'steered', 'calibrate_strength', "
                "'logit_lens', 'item_accuracy', 'TrainConfig', 'paired_difference', 'seed_t_difference', 'Grid']\n"
                "assert set(names) <= set(reprkit.__all__), set(names) - set(reprkit.__all__)\n"
                "assert all(callable(getattr(reprkit, n)) for n in names)\n"
                "from reprkit import train\nprint(callable(train), train.__name__)\n"
                "import reprkit.train\nfrom reprkit import train\nprint(callable(train), train.__name__)\n")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "train", "True", "reprkit.train"]
