"""``reprkit`` command line: ``reprkit train`` and ``reprkit inspect``."""

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


def main(argv: list[str] | None = None) -> None:
    import logging

    from .config import TrainConfig

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # CPU kernel notices, not ours
    command = tyro.extras.subcommand_cli_from_dict({"train": TrainConfig, "inspect": Inspect}, args=argv, prog="reprkit")
    if isinstance(command, TrainConfig):
        from .train import train

        train(command)
    else:
        command.run()


if __name__ == "__main__":
    main(sys.argv[1:])
