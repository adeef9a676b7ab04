import pytest

from reprkit.cli import main, parse_train
from reprkit.config import PRESETS, TrainConfig


def test_defaults_and_flags():
    cfg = parse_train([])
    assert cfg == TrainConfig() and cfg.loss == "reprpo" and cfg.model == "smollm2-135m-instruct"
    assert cfg.data == "embedded:arithmetic"
    cfg = parse_train(["--loss", "dpo", "--dpo.beta", "0.3", "--lora.r", "4", "--eval-data", "genies:alpaca_easy"])
    assert cfg.loss == "dpo" and cfg.dpo.beta == 0.3 and cfg.lora.r == 4 and cfg.eval_data == ("genies:alpaca_easy",)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_set_defaults_and_flags_override(name):
    cfg = parse_train(["--preset", name])
    assert cfg.loss == PRESETS[name]["loss"]
    assert parse_train([f"--preset={name}", "--steps", "7"]).steps == 7


def test_direction_presets_configure_the_variant():
    assert parse_train(["--preset", "reprpo-direction"]).reprpo.retain == "direction"
    cfg = parse_train(["--preset", "reprpo-direction-only", "--reprpo.w-direction", "2"])
    assert cfg.reprpo.w_magnitude == 0 and cfg.reprpo.retain == "direction" and cfg.reprpo.w_direction == 2
    assert parse_train([]).reprpo.retain == "l2"  # presets do not leak into the defaults


def test_unknown_preset_and_bad_flag():
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        parse_train(["--preset", "nope"])
    with pytest.raises(SystemExit):
        parse_train(["--loss", "ppo"])


def test_help_documents_every_field(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--loss", "--data", "--reprpo.retain", "--dpo.beta", "--reroute.alpha", "--lora.r", "--resume",
                 "--gradient-checkpointing", "--quantization", "--preset"):
        assert flag in out, flag


def test_config_roundtrip():
    cfg = parse_train(["--preset", "ipo", "--steps", "3"])
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown config fields"):
        TrainConfig.from_dict({**cfg.to_dict(), "bogus": 1})
