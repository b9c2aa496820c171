"""The shipped launch configurations parse, and the engines read them as intended.

DeepSpeed is not installed in CI, so the DeepSpeed JSON files are checked
against the keys DeepSpeed documents and run through transformers' own
"auto"-filling code; the FSDP JSON goes through ``TrainingArguments`` and
accelerate's FSDP plugin; the accelerate YAML files go through ``accelerate
launch``'s own argument handling, up to the environment it hands each rank.
"""

import json
import tomllib
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
from accelerate.utils.deepspeed import HfDeepSpeedConfig
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments
from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

from diffmodel.errors import DiffModelError
from diffmodel.launch import CONFIG_DIR, config_names, config_path
from diffmodel.train.args import parse_args

ROOT = Path(__file__).resolve().parents[1]
DEEPSPEED = ["ds_zero2.json", "ds_zero3.json"]
ACCELERATE = ["accelerate_ddp.yaml", "accelerate_fsdp.yaml", "accelerate_deepspeed.yaml"]

#: Top-level and ZeRO keys from the DeepSpeed configuration reference that the shipped files may use.
DS_TOP_KEYS = {
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping",
    "optimizer", "scheduler", "fp16", "bf16", "zero_optimization", "steps_per_print", "wall_clock_breakdown",
    "activation_checkpointing", "communication_data_type", "prescale_gradients", "gradient_predivide_factor",
    "zero_allow_untested_optimizer",
}
DS_ZERO_KEYS = {
    "stage", "overlap_comm", "contiguous_gradients", "allgather_partitions", "allgather_bucket_size",
    "reduce_scatter", "reduce_bucket_size", "offload_optimizer", "offload_param", "sub_group_size",
    "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold", "stage3_max_live_parameters",
    "stage3_max_reuse_distance", "stage3_gather_16bit_weights_on_model_save", "round_robin_gradients",
}


def _walk(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


class TestConfigPath:
    def test_every_file_is_found_with_or_without_suffix(self):
        assert set(config_names()) == {"fsdp.json", *DEEPSPEED, *ACCELERATE}
        for name in config_names():
            assert config_path(name) == CONFIG_DIR / name and config_path(name).is_file()
        assert config_path("ds_zero3") == CONFIG_DIR / "ds_zero3.json"
        assert config_path("accelerate_fsdp").name == "accelerate_fsdp.yaml"

    def test_unknown_name_lists_the_shipped_ones(self):
        with pytest.raises(DiffModelError, match=r"no shipped launch configuration named 'zero4'.*ds_zero3.json"):
            config_path("zero4")

    def test_declared_as_package_data(self):
        data = tomllib.loads((ROOT / "pyproject.toml").read_text())
        assert "launch/configs/*" in data["tool"]["setuptools"]["package-data"]["diffmodel"]


def _trainer_deepspeed_config(path):
    """transformers' HfTrainerDeepSpeedConfig logic on accelerate's config class.

    Without the deepspeed package, transformers defines its DeepSpeed config
    classes on top of ``object``; grafting the methods onto accelerate's class
    (which needs no deepspeed) runs the very code that fills "auto" values.
    """
    methods = {k: v for k, v in vars(HfTrainerDeepSpeedConfig).items() if k not in ("__init__", "__dict__", "__weakref__")}
    cls = type("TrainerDeepSpeedConfig", (HfDeepSpeedConfig,), methods)
    config = cls(str(path))
    config.mismatches, config._dtype = [], None
    return config


class TestDeepSpeedFiles:
    @pytest.mark.parametrize("name", DEEPSPEED)
    def test_only_documented_keys(self, name):
        config = json.loads(config_path(name).read_text())
        assert set(config) <= DS_TOP_KEYS
        assert set(config["zero_optimization"]) <= DS_ZERO_KEYS

    @pytest.mark.parametrize("name", DEEPSPEED)
    def test_no_optimizer_or_scheduler_of_its_own(self, name):
        config = json.loads(config_path(name).read_text())
        assert "optimizer" not in config and "scheduler" not in config
        # the Trainer's torch optimizer is handed to ZeRO, which refuses it without this
        assert config["zero_allow_untested_optimizer"] is True

    @pytest.mark.parametrize(("name", "stage"), [("ds_zero2.json", 2), ("ds_zero3.json", 3)])
    @pytest.mark.parametrize("bf16", [False, True])
    def test_trainer_fills_every_auto_from_training_arguments(self, name, stage, bf16):
        config = _trainer_deepspeed_config(config_path(name))
        assert config.get_value("zero_optimization.stage") == stage
        args = TrainingArguments(output_dir="unused", use_cpu=True, per_device_train_batch_size=3, gradient_accumulation_steps=4,
                                 max_grad_norm=0.5, bf16=bf16, report_to="none")
        config.trainer_config_process(args)
        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, bos_token_id=0, eos_token_id=0))
        config.trainer_config_finalize(args, model, num_training_steps=10)
        assert config.mismatches == []
        assert [k for k, v in _walk(config.config) if v == "auto"] == []
        assert config.config["train_micro_batch_size_per_gpu"] == 3
        assert config.config["gradient_accumulation_steps"] == 4
        assert config.config["train_batch_size"] == 3 * 4 * args.world_size
        assert config.config["gradient_clipping"] == 0.5
        assert config.config["bf16"]["enabled"] is bf16 and config.config["fp16"]["enabled"] is False
        assert config.config["zero_optimization"]["reduce_bucket_size"] == 32 * 32

    def test_zero3_gathers_a_normal_checkpoint_on_save(self):
        config = json.loads(config_path("ds_zero3.json").read_text())
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True

    @pytest.mark.parametrize(("name", "stage"), [("ds_zero2.json", 2), ("ds_zero3.json", 3)])
    def test_accelerate_plugin_reads_the_file(self, name, stage):
        plugin = DeepSpeedPlugin(hf_ds_config=str(config_path(name)))
        assert plugin.zero_stage == stage


class TestFsdpFile:
    @pytest.mark.parametrize("fsdp", ["full_shard auto_wrap", True])
    def test_training_arguments_build_the_plugin(self, fsdp):
        args = TrainingArguments(output_dir="unused", fsdp=fsdp, fsdp_config=str(config_path("fsdp.json")), use_cpu=True, report_to="none")
        assert args.fsdp is True
        plugin_args = args.fsdp_plugin_args
        assert plugin_args["fsdp_version"] == 2
        assert plugin_args["reshard_after_forward"] is True  # full shard
        assert plugin_args["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert plugin_args["activation_checkpointing"] is True
        assert plugin_args["state_dict_type"] == "FULL_STATE_DICT"
        plugin = FullyShardedDataParallelPlugin(**plugin_args)
        assert plugin.activation_checkpointing and plugin.reshard_after_forward

    def test_diffmodel_train_command_line_parses_it(self, tmp_path):
        _, _, training_args = parse_args([
            "--output_dir", str(tmp_path), "--do_train", "--bf16", "--use_cpu",
            "--fsdp", "full_shard auto_wrap", "--fsdp_config", str(config_path("fsdp.json")),
        ])
        assert training_args.fsdp is True and training_args.bf16
        assert training_args.fsdp_plugin_args["activation_checkpointing"] is True

    def test_only_keys_transformers_reads(self):
        # the "Supported keys" of TrainingArguments.fsdp_config in transformers 5
        known = {"version", "reshard_after_forward", "cpu_offload", "activation_checkpointing", "cpu_ram_efficient_loading",
                 "state_dict_type", "auto_wrap_policy", "transformer_layer_cls_to_wrap", "min_num_params"}
        assert set(json.loads(config_path("fsdp.json").read_text())) <= known


def _launch_env(name, monkeypatch):
    """What ``accelerate launch --config_file NAME`` (node 1 of 2, 8 GPUs each) puts in each rank's environment."""
    args = launch_command_parser().parse_args([
        "--config_file", str(config_path(name)), "--num_processes", "16", "--num_machines", "2", "--machine_rank", "1",
        "--main_process_ip", "10.0.0.1", "--main_process_port", "29500", "-m", "diffmodel.cli", "train", "--bf16",
    ])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    for key, value in env.items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)
    return args, env


class TestAccelerateFiles:
    @pytest.mark.parametrize("name", ACCELERATE)
    def test_accelerate_loads_it_without_unknown_keys(self, name):
        config = load_config_from_file(str(config_path(name)))
        assert config.mixed_precision == "bf16"
        assert yaml.safe_load(config_path(name).read_text())["compute_environment"] == "LOCAL_MACHINE"

    def test_ddp(self, monkeypatch):
        args, env = _launch_env("accelerate_ddp.yaml", monkeypatch)
        assert args.multi_gpu and not (args.use_fsdp or args.use_deepspeed)
        assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"

    def test_fsdp_full_shard_bf16_activation_checkpointing(self, monkeypatch):
        args, env = _launch_env("accelerate_fsdp.yaml", monkeypatch)
        assert args.use_fsdp and env["ACCELERATE_USE_FSDP"] == "true"
        plugin = FullyShardedDataParallelPlugin()  # built from the environment, as in each rank
        assert plugin.fsdp_version == 2
        assert plugin.reshard_after_forward is True
        assert plugin.activation_checkpointing is True
        assert plugin.cpu_ram_efficient_loading is True
        assert "transformer_auto_wrap_policy" in getattr(plugin.auto_wrap_policy, "__name__", str(plugin.auto_wrap_policy))
        assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"

    def test_deepspeed_zero3_per_node_launcher(self, monkeypatch):
        args, env = _launch_env("accelerate_deepspeed.yaml", monkeypatch)
        assert args.use_deepspeed and args.deepspeed_multinode_launcher == "standard"  # torch.distributed.run on each node, as srun starts it
        plugin = DeepSpeedPlugin()
        assert plugin.zero_stage == 3
        config = plugin.deepspeed_config
        assert config["train_micro_batch_size_per_gpu"] == "auto" and config["gradient_accumulation_steps"] == "auto"
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
