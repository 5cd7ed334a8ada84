"""Experiment configs: schema, overrides, validation messages, experiment folders."""

import copy
from pathlib import Path

import pytest

from tdlm.config import ConfigError, generation_config, load_config, model_config, save_config, training_arguments
from tdlm.configuration_tdlm import InvalidConfigValue, TDLMConfig
from tdlm.generation_tdlm import DiffusionGenerationConfig
from tdlm.runs import Experiment, list_checkpoints, resume_point

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["example_config", "quick_test", "quick_test_ar", "quick_test_bd", "wikitext2_offline"]
MODES = {"_ar": "autoregressive", "_bd": "block_diffusion"}
BASE = ["model.tokenizer=gpt2", "data.train_files=x.txt"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_validate(name):
    config = load_config(REPO / "configs" / f"{name}.yaml")
    assert config["data"]["block_size"] >= 16
    assert config["model"]["training_mode"] == MODES.get(name[-3:], "diffusion")


def test_example_config_is_the_7m_gpu_recipe():
    config = load_config(REPO / "configs" / "example_config.yaml")
    assert config["training"]["batch_size"] == 256 and config["data"]["block_size"] == 256
    assert config["training"]["mixed_precision"] == "bf16"
    assert (config["model"]["hidden_size"], config["model"]["num_hidden_layers"]) == (128, 3)
    # the fastest measured H100 setting (docs/benchmarks.md): Triton head, backbone compiled with CUDA graphs
    assert config["model"]["head_implementation"] == "triton"
    assert (config["training"]["torch_compile"], config["training"]["torch_compile_mode"]) == (True, "reduce-overhead")


def test_overrides_parse_yaml_values():
    config = load_config(None, BASE + ["training.learning_rate=3e-4", "monitoring.wandb.enabled=true",
                                       "training.max_steps=12", "monitoring.wandb.tags=[a, b]"])
    assert config["training"]["learning_rate"] == pytest.approx(3e-4)
    assert isinstance(config["training"]["learning_rate"], float)
    assert config["monitoring"]["wandb"]["enabled"] is True and config["monitoring"]["wandb"]["tags"] == ["a", "b"]
    assert config["training"]["max_steps"] == 12


def test_mixed_precision_no_survives_yaml_1_1():
    """YAML 1.1 reads a bare `no` as false; accelerate's name for full precision must still work, unquoted."""
    assert load_config(None, BASE + ["training.mixed_precision=no"])["training"]["mixed_precision"] == "no"
    with pytest.raises(ConfigError, match="training.mixed_precision"):
        load_config(None, BASE + ["training.mixed_precision=yes"])


def test_the_precision_that_runs_is_resolved_when_the_config_is_loaded(monkeypatch):
    """accelerate's precision (ACCELERATE_MIXED_PRECISION) fills an unset training.mixed_precision at load time, so
    the config a run saves and the TrainingArguments built from it agree, whatever is built first."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    config = load_config(None, BASE)
    assert config["training"]["mixed_precision"] == "bf16"
    assert load_config(None, BASE + ["training.mixed_precision=fp16"])["training"]["mixed_precision"] == "fp16"
    snapshot = copy.deepcopy(config)
    arguments = training_arguments(config, "out", use_cpu=True)
    assert config == snapshot  # building the Trainer's arguments writes nothing into the config
    assert arguments.bf16 and not arguments.fp16


def test_the_schema_hands_out_the_model_generation_and_training_configs():
    config = load_config(None, BASE + ["model.hidden_size=64", "model.vocab_size=120",
                                       "diffusion.noise_schedule=cosine", "sampling.num_steps=12", "data.block_size=32",
                                       "training.batch_size=4", "training.epochs=2"])
    ids = dict(vocab_size=100, mask_token_id=99, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    model = model_config(config, ids)
    assert (model.hidden_size, model.vocab_size, model.max_position_embeddings) == (64, 120, 32)  # vocab padded
    assert (model.noise_schedule, model.mask_token_id, model.eos_token_id) == ("cosine", 99, 1)
    generation = generation_config(config, model)
    assert (generation.num_steps, generation.max_length, generation.pad_token_id) == (12, 32, 0)
    arguments = training_arguments(config, "out", "run")
    assert (arguments.per_device_train_batch_size, arguments.num_train_epochs, arguments.run_name) == (4, 2.0, "run")
    with pytest.raises(ConfigError, match="model.vocab_size 120 is smaller than the tokenizer's 200 tokens"):
        model_config(config, {**ids, "vocab_size": 200})


def test_model_and_sampling_errors_carry_their_field():
    with pytest.raises(InvalidConfigValue) as error:
        TDLMConfig.check_values(hidden_size=65)
    assert (error.value.owner, error.value.field) == ("TDLMConfig", "num_attention_heads")
    with pytest.raises(InvalidConfigValue) as error:
        DiffusionGenerationConfig(top_k=0).validate()
    assert (error.value.owner, error.value.field) == ("DiffusionGenerationConfig", "top_k")
    assert str(error.value) == "DiffusionGenerationConfig.top_k: must be an integer >= 1, got 0"


@pytest.mark.parametrize("override, message", [
    ("training.learnig_rate=3e-4", "training.learnig_rate: unknown key"),
    ("trainig.learning_rate=3e-4", "trainig: unknown section"),
    ("monitoring.wandb.entity=me", "monitoring.wandb.entity: unknown key"),
    ("training.mixed_precision=fp8", "training.mixed_precision"),
    ("sampling.cfg_scale=-1", "sampling.cfg_scale: must be a finite number >= 0"),
    ("training.batch_size=0", "training.batch_size: must be >= 1"),
    ("training.batch_size=many", "training.batch_size: expected int"),
    ("training.learning_rate=-1", "training.learning_rate: must be > 0"),
    ("diffusion.min_mask_ratio=1.0", "diffusion.min_mask_ratio"),
    ("model.num_attention_heads=3", "model.num_attention_heads"),
    ("model.training_mode=gan", "model.training_mode"),
    ("diffusion.noise_schedule=sqrt", "diffusion.noise_schedule"),
    ("training.cleanup_checkpoints=3", "training.cleanup_checkpoints: expected bool"),
    ("model.max_position_embeddings=8", "model.max_position_embeddings"),
    ("model.head_implementation=cuda", "model.head_implementation"),
    ("training.torch_compile_mode=fast", "training.torch_compile_mode"),
])
def test_bad_keys_and_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, BASE + [override])


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {tokenizer: gpt2}\ndata: {train_files: a.txt}\ntraining:\n  learnig_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"training\.learnig_rate: unknown key"):
        load_config(path)


def test_data_source_required():
    with pytest.raises(ConfigError, match=r"data\.train_files"):
        load_config(None, ["model.tokenizer=gpt2"])


def test_resolved_config_round_trips(tmp_path):
    config = load_config(REPO / "configs" / "quick_test.yaml", ["training.learning_rate=1e-3"])
    save_config(config, tmp_path / "configs" / "config.yaml")
    assert load_config(tmp_path / "configs" / "config.yaml") == config


def test_experiment_folder_and_latest_checkpoint(tmp_path):
    experiment = Experiment(tmp_path / "exp1").create()
    for name in ("configs", "checkpoints", "logs", "results"):
        assert (tmp_path / "exp1" / name).is_dir()
    for step in (5, 10, 20):
        folder = experiment.checkpoints_dir / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        if step != 20:  # checkpoint-20 is incomplete (no trainer_state.json): never "latest"
            (folder / "trainer_state.json").write_text("{}")
    (experiment.checkpoints_dir / ".tmp-30").mkdir()
    assert [p.name for p in list_checkpoints(experiment.checkpoints_dir)] == ["checkpoint-5", "checkpoint-10"]
    checkpoint, found = resume_point(experiment.root)
    assert checkpoint.name == "checkpoint-10" and found.root == experiment.root
    checkpoint, found = resume_point(experiment.checkpoints_dir / "checkpoint-5")
    assert checkpoint.name == "checkpoint-5" and found.root == experiment.root
    with pytest.raises(FileNotFoundError, match="missing"):
        resume_point(tmp_path / "missing")


def test_push_to_hub_needs_a_repo_id():
    with pytest.raises(ConfigError, match="training.hub_model_id"):
        load_config(None, ["model.tokenizer=gpt2", "data.train_files=train.txt", "training.push_to_hub=true"])
    config = load_config(None, ["model.tokenizer=gpt2", "data.train_files=train.txt", "training.push_to_hub=true",
                                "training.hub_model_id=me/tdlm"])
    assert config["training"]["hub_model_id"] == "me/tdlm"
