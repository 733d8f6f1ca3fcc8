"""parse_arguments: every field and nested key checked, values coerced to the annotated types, ranges validated."""

from __future__ import annotations

import dataclasses

import pytest

from unipre3d_hf.training import TrainingArguments, parse_arguments
from unipre3d_hf.training.pretrain import PretrainArguments, parse_pretrain_arguments


def test_yaml_preset_then_overrides_coerced_to_the_field_types(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("max_steps: 50\nlearning_rate: 3e-4\nbackbone: {embed_dim: 16}\nrun_name: demo\n")
    args = parse_pretrain_arguments([
        "--config", str(preset), "--max_steps", "7", "--backbone.k_neighbors", "[8, 8]", "--use_ema", "false",
        "--image_size", "[24, 32]", "--val_samples", "null", "--run_name=007", "--max_grad_norm", "2",
        "--adam_epsilon", "1e-15", "--save_every", "1e3",
    ])  # fmt: skip
    assert args.max_steps == 7 and args.learning_rate == 3e-4 and isinstance(args.learning_rate, float)
    assert args.backbone == {"embed_dim": 16, "k_neighbors": [8, 8]} and args.use_ema is False
    assert args.image_size == [24, 32] and args.val_samples is None and args.run_name == "007"
    assert args.max_grad_norm == 2.0 and isinstance(args.max_grad_norm, float) and args.adam_epsilon == 1e-15
    assert args.save_every == 1000 and isinstance(args.save_every, int)
    assert parse_pretrain_arguments(["--image_size", "64"]).image_size == 64
    # the pre-training defaults (the paper's) and the shared ones
    defaults = parse_pretrain_arguments([])
    assert (defaults.adam_epsilon, defaults.use_ema, defaults.eval_every, defaults.mixed_precision) == (
        1e-15, True, 2000, None
    )  # fmt: skip


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--backbone.embed_dimm", "8"],
            "unknown key `backbone.embed_dimm` for PointMLPConfig; did you mean 'embed_dim'",
        ),
        (
            ["--model.initial_scal", "0.1"],
            "unknown key `model.initial_scal` for UniPre3DConfig; did you mean 'initial_scale'",
        ),
        (["--preset", "sparse_unet_scannet", "--backbone.base_channel", "8"], "did you mean 'base_channels'"),
        (["--max_stepz", "3"], "unknown field `--max_stepz`; did you mean 'max_steps'"),
        (["--max_steps", "-5"], "`max_steps` must be an int >= 1, got -5"),
        (["--save_every", "0"], "`save_every` must be an int >= 1, got 0"),
        (["--log_every", "0"], "`log_every` must be an int >= 1, got 0"),
        (["--eval_every", "0"], "`eval_every` must be an int >= 1"),
        (["--batch_size", "0"], "`batch_size` must be an int >= 1"),
        (["--learning_rate", "0"], "`learning_rate` must be a finite float > 0"),
        (["--max_steps", "abc"], "`max_steps` must be int, got 'abc'"),
        (["--max_steps", "2.5"], "`max_steps` must be int, got 2.5"),
        (["--use_ema", "maybe"], "`use_ema` must be bool, got 'maybe'"),
        (["--learning_rate", "fast"], "`learning_rate` must be float, got 'fast'"),
        (["--val_samples", "many"], "`val_samples` must be int or null, got 'many'"),
        (["--backbone", "8"], "`backbone` must be dict, got 8"),
        (["--lr_scheduler", "linear"], "`lr_scheduler` must be one of \\['step', 'cosine', 'constant'\\]"),
        (["--preset", "pointnet"], "`preset` must be one of"),
        (["--image_size", "[1, 2, 3]"], "`image_size` must be null, an int >= 1 or \\[height, width\\]"),
        (["--max_steps"], "`--max_steps` needs a value"),
        (["max_steps", "3"], "expected `--field value`, got 'max_steps'"),
        (["--max_steps.x", "3"], "only dict fields take dotted keys"),
        (["--config", "/no/such.yaml"], "`--config`: no file at"),
    ],
)
def test_mistakes_are_errors_naming_the_field(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_pretrain_arguments(argv)


def test_preset_file_mistakes(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_step: 5\n")
    with pytest.raises(ValueError, match="bad.yaml: unknown field 'max_step'; did you mean 'max_steps'"):
        parse_pretrain_arguments(["--config", str(bad)])
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="must hold a mapping of fields"):
        parse_pretrain_arguments(["--config", str(bad)])
    bad.write_text("max_steps: '12'\nmodel: {initial_scale: 0.05}\n")  # a quoted number is still a number
    assert parse_pretrain_arguments(["--config", str(bad)]).max_steps == 12


def test_the_script_exits_with_the_message_before_training(tmp_path):
    from unipre3d_hf.training.pretrain import main

    with pytest.raises(SystemExit, match="pretrain: error: unknown key `backbone.embed_dimm`"):
        main(["--backbone.embed_dimm", "8", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_subclass_adds_fields_and_ranges():
    @dataclasses.dataclass
    class Finetune(TrainingArguments):
        num_classes: int = 10
        head: dict = dataclasses.field(default_factory=dict)

        def validate(self):
            super().validate()
            if self.num_classes < 2:
                raise ValueError(f"`num_classes` must be an int >= 2, got {self.num_classes}")

    class HeadConfig:
        def __init__(self, dropout: float = 0.5, hidden: int = 256):
            pass

    args = parse_arguments(Finetune, ["--num_classes", "40", "--head.dropout", "0.1"], {"head": HeadConfig})
    assert args.num_classes == 40 and args.head == {"dropout": 0.1} and args.max_steps == 1000
    with pytest.raises(ValueError, match="`num_classes` must be an int >= 2"):
        parse_arguments(Finetune, ["--num_classes", "1"])
    with pytest.raises(ValueError, match="unknown key `head.hiden` for HeadConfig; did you mean 'hidden'"):
        parse_arguments(Finetune, ["--head.hiden", "3"], {"head": HeadConfig})
    assert isinstance(parse_pretrain_arguments([]), PretrainArguments)


def test_help_lists_every_field_with_its_default_and_exits_zero(capsys):
    with pytest.raises(SystemExit) as stop:
        parse_arguments(PretrainArguments, ["--max_steps", "5", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(PretrainArguments):
        assert f"--{f.name} " in text
    assert "default: 100000" in text and "default: 1e-15" in text  # max_steps, adam_epsilon of the paper's presets
