"""``reprkit`` command line: ``reprkit train``, ``reprkit dashboard``, ``reprkit inspect``."""

from __future__ import annotations

import dataclasses
import sys

import tyro

from .models import DEFAULT_MODEL


@dataclasses.dataclass
class Inspect:
    """Print per-layer norms and the cosine between two prompts' mean directions."""

    model: str = DEFAULT_MODEL
    """hub id, local folder, or the default model's name"""
    layers: str = "range(0,1.0,3)"
    """layer spec: 3, -1, 0.5, 'range(.3,-2)', '0,10,20', 'model.layers.4'"""
    prompts: tuple[str, ...] = ("What is the capital of France?", "Write a short poem about the sea.")
    """two or more prompts (the cosine compares the first two)"""
    chat: bool = True
    """wrap prompts in the model's chat template"""

    def run(self) -> None:
        from .inspect import format_table, layer_table
        from .models import load_model

        model, tok = load_model(self.model)
        rows = layer_table(model, tok, self.prompts, self.layers, chat=self.chat)
        print(f"{self.model}: {model.config.num_hidden_layers} blocks, hidden size {model.config.hidden_size}")
        for k, p in enumerate(self.prompts):
            print(f"  prompt {k}: {p!r}")
        print(format_table(rows))


@dataclasses.dataclass
class Dashboard:
    """Open the Streamlit dashboard of the runs in RUNS_DIR (served on localhost)."""

    runs_dir: tyro.conf.Positional[str] = "runs"
    """directory whose sub-directories are runs"""
    port: int = 8501
    address: str = "127.0.0.1"
    """address to serve on (localhost by default; 0.0.0.0 exposes it to the network)"""

    def command(self) -> list[str]:
        import importlib.util

        app = importlib.util.find_spec("reprkit.app.dashboard").origin  # without importing (it renders)
        return [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", self.address,
                "--server.port", str(self.port), "--server.headless", "true",
                "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal", "--", "--runs-dir", self.runs_dir]

    def run(self) -> None:
        import os

        os.execv(sys.executable, self.command())


def _take_preset(argv: list[str]) -> tuple[str | None, list[str]]:
    """Remove ``--preset NAME`` (or ``--preset=NAME``) from argv."""
    rest, name, i = [], None, 0
    while i < len(argv):
        if argv[i] == "--preset" and i + 1 < len(argv):
            name, i = argv[i + 1], i + 2
            continue
        if argv[i].startswith("--preset="):
            name = argv[i].split("=", 1)[1]
        else:
            rest.append(argv[i])
        i += 1
    return name, rest


def parse_train(argv: list[str]):
    """``reprkit train`` arguments -> TrainConfig; ``--preset NAME`` sets the defaults, flags override."""
    from .config import PRESETS, TrainConfig, preset

    name, rest = _take_preset(argv)
    default = preset(name) if name else TrainConfig()
    return tyro.cli(TrainConfig, args=rest, default=default, prog="reprkit train",
                    description=f"{TrainConfig.__doc__}\n\n--preset NAME first sets the defaults: {', '.join(PRESETS)}.")


def main(argv: list[str] | None = None) -> None:
    import logging

    from .config import TrainConfig

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # CPU kernel notices, not ours
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        from .train import train

        train(parse_train(argv[1:]))
        return
    command = tyro.extras.subcommand_cli_from_dict({"train": TrainConfig, "dashboard": Dashboard, "inspect": Inspect}, args=argv, prog="reprkit")
    if isinstance(command, TrainConfig):  # only reached for `reprkit --help`
        return
    command.run()


if __name__ == "__main__":
    main(sys.argv[1:])
