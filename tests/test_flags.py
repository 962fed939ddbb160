"""The one flag framework (``models.common.flags``), the light config modules and the CLI's fast path.

Every test parses real command lines into the real config dataclasses; the CLI tests run the real
command in a subprocess and check that TensorFlow was never imported on the help and error paths.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

import heartwatch_cli
from models.common import flags
from models.common.flags import FlagError, field, parse_beam_flags, parse_flags
from pipeline import config as pipeline_config
from pipeline.config import DenoiseRunConfig, DenoiseTrainConfig, ScoreConfig, TrainConfig
from streaming.config import BrokerConfig, ReplayConfig, StreamConfig, TailConfig

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Example:
    """Every supported flag type."""

    name: str = field("a name", default="plain")
    count: int = field("a count", default=3)
    ratio: float = field("a ratio", default=0.5)
    enabled: bool = field("a switch", default=False)
    limit: int | None = field("an optional count", default=None)
    label: str | None = field("an optional text", default=None)
    words: tuple[str, ...] = field("some words", default=("a", "b"))
    sizes: tuple[int, ...] = field("some sizes", default=())
    pairs: tuple[str, ...] = field("key=value pairs", default=(), separator=None)

    def __post_init__(self):
        if self.count < 0:
            raise ValueError(f"--count must be zero or positive, got {self.count}")


@dataclasses.dataclass(frozen=True)
class NeedsName:
    """A flag without a default."""

    name: str = field("required name")
    size: int = field("a size", default=1)


def _write_json(path, document) -> str:
    path.write_text(json.dumps(document))
    return str(path)


# ------------------------------------------------------------------------------------------ types


def test_every_type_converts_from_the_command_line():
    config = parse_flags(Example, ["--name", "x", "--count", "7", "--ratio", "1e-3", "--enabled", "YES",
                                   "--limit", "4", "--label", "tag", "--words", "c, d", "--words", "e",
                                   "--sizes", "1,2", "--pairs", "a=1,2", "--pairs", "b=3"])
    assert config == Example(name="x", count=7, ratio=0.001, enabled=True, limit=4, label="tag",
                             words=("c", "d", "e"), sizes=(1, 2), pairs=("a=1,2", "b=3"))
    assert parse_flags(Example, []) == Example()
    assert parse_flags(Example, ["--count=-0", "--enabled=off", "--limit", ""]).limit is None
    for word, value in (("true", True), ("1", True), ("on", True), ("false", False), ("No", False), ("0", False)):
        assert parse_flags(Example, ["--enabled", word]).enabled is value


@pytest.mark.parametrize("arguments, message", [
    (["--enabled", "maybe"], "--enabled must be true or false, got 'maybe'"),
    (["--count", "x"], "--count must be an integer, got 'x'"),
    (["--count", "1.5"], "--count must be an integer, got '1.5'"),
    (["--ratio", "fast"], "--ratio must be a number, got 'fast'"),
    (["--ratio", "nan"], "--ratio must be a number, got 'nan'"),
    (["--limit", "none"], "--limit must be an integer, got 'none'"),
    (["--sizes", "1,x"], "--sizes must be an integer, got 'x'"),
    (["--count"], "--count: expected one argument"),
    (["--count", "-2"], "--count must be zero or positive, got -2"),
])
def test_bad_values_name_the_flag(arguments, message):
    with pytest.raises(ValueError) as raised:
        parse_flags(Example, arguments)
    assert str(raised.value) == message


def test_report_maybe_is_a_clear_flag_error():
    with pytest.raises(FlagError) as raised:
        parse_beam_flags(TrainConfig, ["--report", "maybe"])
    assert str(raised.value) == "--report must be true or false, got 'maybe'"
    assert parse_beam_flags(TrainConfig, ["--report", "false"], deep_checks=False)[0].report is False


def test_unknown_flags_and_arguments_are_refused_and_names_are_not_abbreviated():
    for arguments, message in ((["--nope", "1"], "unknown flag --nope"), (["--nope=1"], "unknown flag --nope"),
                               (["--cou", "1"], "unknown flag --cou"), (["stray"], "unexpected argument 'stray'")):
        with pytest.raises(FlagError, match=f"^{re.escape(message)}$"):
            parse_flags(Example, arguments)


def test_a_field_without_default_is_a_required_flag():
    with pytest.raises(FlagError, match=r"^--name is required$"):
        parse_flags(NeedsName, ["--size", "2"])
    assert parse_flags(NeedsName, ["--name", "n"]) == NeedsName(name="n")


def test_unsupported_field_types_are_refused_when_the_parser_is_built():
    @dataclasses.dataclass(frozen=True)
    class Bad:
        mapping: dict = field("no dicts", default=None)

    with pytest.raises(TypeError, match="flags support"):
        flags.build_parser(Bad)


# ------------------------------------------------------------------------------------------ --config


def test_config_file_values_are_typed_and_overridden_by_flags(tmp_path):
    path = _write_json(tmp_path / "example.json", {"name": "file", "count": 5, "ratio": 2, "enabled": "yes",
                                                  "limit": None, "words": ["x", "y"], "sizes": "4,5"})
    from_file = parse_flags(Example, ["--config", path])
    assert from_file == Example(name="file", count=5, ratio=2.0, enabled=True, limit=None, words=("x", "y"),
                                sizes=(4, 5))
    assert isinstance(from_file.ratio, float)
    overridden = parse_flags(Example, ["--count", "9", f"--config={path}", "--words", "z"])
    assert (overridden.name, overridden.count, overridden.words) == ("file", 9, ("z",))


def test_config_file_on_a_non_local_scheme_is_read_through_the_file_layer():
    from models.common import files

    path = "ram://heartwatch-flags/stream.json"
    files.write_json(path, {"batch_size": 64, "kafka_option": {"security_protocol": "SASL_SSL"}})
    config = parse_flags(StreamConfig, ["--config", path])
    assert config.batch_size == 64 and config.options() == {"security_protocol": "SASL_SSL"}


@pytest.mark.parametrize("document, message", [
    ({"count": "x"}, "--count must be an integer, got 'x' (from --config {path})"),
    ({"count": True}, "--count must be an integer, got True (from --config {path})"),
    ({"count": 2.0}, "--count must be an integer, got 2.0 (from --config {path})"),
    ({"enabled": "maybe"}, "--enabled must be true or false, got 'maybe' (from --config {path})"),
    ({"name": 5}, "--name must be text, got 5 (from --config {path})"),
    ({"name": None}, "--name must be text, got null (from --config {path})"),
    ({"words": {"a": 1}}, "--words must be a list or comma-separated text, got {{'a': 1}} (from --config {path})"),
    ({"count": 1, "colour": "red", "batch": 2}, "--config {path}: unknown keys batch, colour; known: "),
    ({"config": "other.json"}, "--config {path}: unknown keys config; known: "),
])
def test_bad_config_files_are_refused_naming_the_key(tmp_path, document, message):
    path = _write_json(tmp_path / "bad.json", document)
    with pytest.raises(FlagError) as raised:
        parse_flags(Example, ["--config", path])
    assert str(raised.value).startswith(message.format(path=path))


def test_config_file_must_exist_and_hold_a_json_object(tmp_path):
    with pytest.raises(FlagError, match="no such file"):
        parse_flags(Example, ["--config", str(tmp_path / "missing.json")])
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(FlagError, match="must hold a JSON object"):
        parse_flags(Example, ["--config", str(tmp_path / "list.json")])
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(FlagError, match="is not JSON"):
        parse_flags(Example, ["--config", str(tmp_path / "broken.json")])


def test_kafka_options_from_a_file_object_are_replaced_by_repeated_flags(tmp_path):
    path = _write_json(tmp_path / "stream.json", {"batch_size": 64, "group_id": "from-file", "kafka_option": {
        "security_protocol": "SASL_SSL", "consumer.fetch_min_bytes": 1}})
    config = parse_flags(StreamConfig, ["--config", path, "--group_id", "from-flag", "--kafka_option",
                                        "sasl_mechanism=PLAIN", "--kafka_option", "ssl_ciphers=A,B"])
    assert (config.batch_size, config.group_id) == (64, "from-flag")
    assert config.options() == {"sasl_mechanism": "PLAIN", "ssl_ciphers": "A,B"}
    assert parse_flags(StreamConfig, ["--config", path]).options() == {"security_protocol": "SASL_SSL",
                                                                       "consumer.fetch_min_bytes": 1}


# ------------------------------------------------------------------------------------------ Beam and positional


def test_beam_jobs_pass_on_beam_pipeline_options_only():
    beam_arguments = ["--runner", "DirectRunner", "--temp_location=/tmp/beam", "--direct_num_workers", "2",
                      "--experiments", "a", "--experiments", "b"]
    config, passed = parse_beam_flags(TrainConfig, ["--seed", "3", *beam_arguments, "--epochs", "2"],
                                      deep_checks=False)
    assert (config.seed, config.epochs) == (3, 2)
    assert passed == beam_arguments
    assert parse_beam_flags(ScoreConfig, ["--batch_size", "8"], deep_checks=False)[1] == []
    with pytest.raises(FlagError, match=r"^unknown flag --nope$"):
        parse_beam_flags(TrainConfig, ["--runner", "DirectRunner", "--nope", "1"])
    with pytest.raises(FlagError, match=r"--direct_num_workers: invalid int value: 'x'"):
        parse_beam_flags(DenoiseRunConfig, ["--input", "images", "--direct_num_workers", "x"])
    with pytest.raises(FlagError, match=r"^unknown flag --runner$"):
        parse_flags(StreamConfig, ["--runner", "DirectRunner"])
    with pytest.raises(FlagError, match=r"^unknown flag --runner$"):
        parse_flags(DenoiseTrainConfig, ["--runner", "DirectRunner"])


def test_tail_takes_its_topic_as_a_positional_argument():
    assert parse_flags(TailConfig, ["events"]).topic == "events"
    assert parse_flags(TailConfig, ["--raw", "true", "events", "--max_messages", "3"]) == TailConfig(
        topic="events", raw=True, max_messages=3)
    assert parse_flags(TailConfig, ["--topic", "other"]).topic == "other"
    assert parse_flags(TailConfig, []).topic == "heartwatch-anomalies"
    with pytest.raises(FlagError, match="give topic once"):
        parse_flags(TailConfig, ["events", "--topic", "other"])
    with pytest.raises(FlagError, match="unexpected argument 'extra'"):
        parse_flags(TailConfig, ["events", "extra"])


# ------------------------------------------------------------------------------------------ job configs


def test_job_validation_names_the_flag_and_deep_checks_wait_for_the_job():
    with pytest.raises(ValueError, match="--candidates: unknown candidate 'nonesuch'"):
        parse_beam_flags(TrainConfig, ["--candidates", "nonesuch"], deep_checks=False)
    with pytest.raises(ValueError, match="--threshold_method: unknown threshold method 'median'"):
        parse_beam_flags(TrainConfig, ["--threshold_method", "median"], deep_checks=False)
    with pytest.raises(ValueError, match="test_fraction"):
        parse_beam_flags(TrainConfig, ["--test_fraction", "2"], deep_checks=False)
    with pytest.raises(ValueError, match="--format: unknown format 'xml'"):
        parse_beam_flags(ScoreConfig, ["--format", "xml"], deep_checks=False)
    with pytest.raises(ValueError, match="--model: unknown denoiser 'unet'"):
        parse_flags(DenoiseTrainConfig, ["--model", "unet"], deep_checks=False)
    with pytest.raises(ValueError, match="--input is required"):
        parse_beam_flags(DenoiseRunConfig, [], deep_checks=False)
    with pytest.raises(ValueError, match="--port must be between 0 and 65535"):
        parse_flags(BrokerConfig, ["--port", "70000"])
    with pytest.raises(ValueError, match="--encoding must be one of json, binary"):
        parse_flags(ReplayConfig, ["--encoding", "xml"])
    columns = ["--label_column", "kind", "--feature_columns", "kind,x1"]
    assert parse_beam_flags(ScoreConfig, columns, deep_checks=False)[0].feature_columns == ("kind", "x1")
    with pytest.raises(ValueError, match="also listed in feature_columns"):
        parse_beam_flags(ScoreConfig, columns)
    with pytest.raises(ValueError, match="--loss: unknown loss 'huber'; choose one of mse, mae, psnr"):
        parse_flags(DenoiseTrainConfig, ["--loss", "huber"], deep_checks=False)


def test_job_configs_keep_their_methods_and_defaults():
    config = parse_beam_flags(TrainConfig, ["--epochs", "4", "--candidates", "dense"])[0]
    assert [(item.name, item.epochs) for item in config.candidate_configs()] == [("dense", 4)]
    assert config.split_config().test_fraction == 0.2 and config.threshold_config().method == "max_f1"
    assert config.dataset_spec().path == "synthetic"
    assert TrainConfig().candidates == ("dense",) and TrainConfig().output_dir == "artifacts/ecg"
    assert TrainConfig().score_error == "window" and TrainConfig().refit is False
    assert ScoreConfig().out == "scores.csv" and DenoiseTrainConfig().model == "unet_denoiser"
    assert DenoiseRunConfig(input="x").noise_spec().is_none
    assert DenoiseTrainConfig(model_parameters='{"depth": 5}').training_config().parameters == {"depth": 5}


def test_train_refit_is_one_flag_in_the_command_line_config_files_and_code(tmp_path):
    assert parse_beam_flags(TrainConfig, ["--refit", "false"], deep_checks=False)[0].refit is False
    assert parse_beam_flags(TrainConfig, ["--refit", "true"], deep_checks=False)[0].refit is True
    path = _write_json(tmp_path / "train.json", {"refit": False, "seed": 2})
    assert parse_beam_flags(TrainConfig, ["--config", path], deep_checks=False)[0] == TrainConfig(refit=False, seed=2)
    assert parse_beam_flags(TrainConfig, ["--config", path, "--refit", "yes"], deep_checks=False)[0].refit is True
    with pytest.raises(FlagError, match="--refit"):
        parse_beam_flags(TrainConfig, ["--refit", "sometimes"], deep_checks=False)


def test_train_score_error_is_checked_by_name():
    assert parse_beam_flags(TrainConfig, ["--score_error", "mae"], deep_checks=False)[0].score_error == "mae"
    with pytest.raises(ValueError, match="--score_error: unknown score error 'max'; choose one of mae, rms, window"):
        parse_beam_flags(TrainConfig, ["--score_error", "max"], deep_checks=False)


def test_light_name_constants_are_their_owners():
    from models.detection import thresholds
    from models.ecg import sources
    from models.family import denoisers
    from models.images import sets

    assert pipeline_config.DATASET_FORMATS is sources.FORMATS
    assert pipeline_config.THRESHOLD_METHODS is thresholds.METHODS
    assert pipeline_config.CANDIDATE_PRESETS == tuple(sorted(pipeline_config.CANDIDATES))
    assert pipeline_config.IMAGE_SET_FORMATS is sets.IMAGE_SET_FORMATS
    assert set(pipeline_config.DENOISER_MODELS) == set(denoisers.MODELS)
    assert pipeline_config.DEFAULT_DENOISER == denoisers.DEFAULT_MODEL


# ------------------------------------------------------------------------------------------ help and the CLI


def _config_classes():
    for subcommand in heartwatch_cli.SUBCOMMANDS.values():
        for command_flags in [subcommand.flags, *subcommand.actions.values()]:
            if command_flags is not None:
                yield command_flags.load(), command_flags.beam


@pytest.mark.parametrize("config_class, beam", list(_config_classes()), ids=lambda item: getattr(item, "__name__", ""))
def test_help_shows_each_default_once(config_class, beam):
    text = flags.build_parser(config_class, prog="heartwatch x", beam=beam).format_help()
    assert "(default: None)" not in text
    every_flag = flags.flags_of(config_class)
    options = [flag.option for flag in every_flag]
    for index, flag in enumerate(every_flag):
        start = re.search(rf"^\s+{re.escape(flag.option)} ", text, re.MULTILINE).start()
        following = [text.find(f"  {option} ", start + 1) for option in options[index + 1:]]
        end = min([position for position in following if position > 0] or [text.find("\n\n", start)])
        entry = " ".join(text[start:end].split())
        assert entry.count("(default:") == 1, entry
        assert f"(default: {flag.shown_default()})" in entry, entry


def _check(argv):
    prog, command_flags, arguments = heartwatch_cli.resolve_flags(argv)
    heartwatch_cli.check_flags(prog, command_flags, arguments)
    return prog, command_flags.config_class, arguments


def test_cli_resolves_every_subcommand_to_its_flags():
    assert _check(["train", "--runner", "DirectRunner", "--seed", "1"]) == (
        "heartwatch train", "TrainConfig", ["--runner", "DirectRunner", "--seed", "1"])
    assert _check(["denoise", "train", "--epochs", "1"]) == ("heartwatch denoise train", "DenoiseTrainConfig",
                                                             ["--epochs", "1"])
    assert _check(["denoise", "train", "--runner", "PortableRunner", "--direct_num_workers", "2"])[2] == [
        "--runner", "PortableRunner", "--direct_num_workers", "2"]
    with pytest.raises(FlagError, match=r"unknown flag --epochz \(did you mean --epochs\?\)"):
        _check(["denoise", "train", "--epochz", "1"])
    assert _check(["denoise", "run", "--input", "x"]) == ("heartwatch denoise run", "DenoiseRunConfig",
                                                          ["--input", "x"])
    assert _check(["tail", "events"]) == ("heartwatch tail", "TailConfig", ["events"])
    with pytest.raises(FlagError, match="unknown flag --runner"):
        _check(["stream", "--runner", "DirectRunner"])
    with pytest.raises(ValueError, match=r"choose train or run \(got 'fit'\)"):
        _check(["denoise", "fit"])


CLI_PROBE = ("import sys, heartwatch_cli\n"
             "status = heartwatch_cli.main(sys.argv[1:])\n"
             "print('tensorflow imported' if 'tensorflow' in sys.modules else 'no tensorflow', status)\n")


def _cli(*arguments):
    environment = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    environment["PYTHONPATH"] = REPOSITORY + os.pathsep + environment.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", CLI_PROBE, *arguments], capture_output=True, text=True,
                          cwd=REPOSITORY, env=environment, timeout=120)


@pytest.mark.parametrize("arguments, status", [
    (["train", "--help"], 0), (["tail", "--help"], 0), (["denoise", "run", "--help"], 0), (["--help"], 0),
    (["denoise", "--help"], 0), (["train", "--report", "maybe"], 2), (["stream", "--batch_size", "x"], 2),
    (["denoise", "train", "--model", "unet"], 2), (["tail", "--nope", "1"], 2),
])
def test_cli_help_and_flag_errors_never_import_tensorflow(arguments, status):
    result = _cli(*arguments)
    assert result.stdout.splitlines()[-1] == f"no tensorflow {status}", result.stderr
    if status == 0:
        assert result.stderr == ""
        assert "usage:" in result.stdout
    else:
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr


def test_cli_usage_errors_are_one_line_with_status_two():
    result = _cli("train", "--report", "maybe")
    assert result.stderr == "heartwatch train: error: --report must be true or false, got 'maybe'\n"
    result = _cli("stream", "--batch_size", "x")
    assert result.stderr == "heartwatch stream: error: --batch_size must be an integer, got 'x'\n"
    result = _cli("denoise", "run", "--input", "x", "--batch_size", "0")
    assert result.stderr == ("heartwatch denoise run: error: --batch_size and --chunk_size must be positive and "
                             "--grid_images >= 0\n")
    result = _cli("nosuch")
    assert result.stderr.startswith("heartwatch: error: unknown subcommand 'nosuch'")


def test_config_modules_import_only_the_standard_library():
    script = ("import sys, heartwatch_cli, models.common.flags, pipeline.config, streaming.config\n"
              "print(sorted(name for name in ('tensorflow', 'apache_beam', 'keras', 'pandas', 'numpy')"
              " if name in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPOSITORY,
                            env={**os.environ, "PYTHONPATH": REPOSITORY}, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_cli_quiets_tensorflow_unless_asked(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setenv("HEARTWATCH_LOG_LEVEL", "DEBUG")
    assert heartwatch_cli.quiet_tensorflow() is False and "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    monkeypatch.setenv("HEARTWATCH_LOG_LEVEL", "INFO")
    assert heartwatch_cli.quiet_tensorflow() is True and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    assert heartwatch_cli.quiet_tensorflow() is False and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"


def test_tensorflow_imported_by_the_cli_writes_nothing_to_stderr():
    script = ("import heartwatch_cli\n"
              "heartwatch_cli.import_tensorflow(heartwatch_cli.quiet_tensorflow())\n"
              "import tensorflow as tf\n"
              "print(float(tf.reduce_sum(tf.constant([1.0, 2.0]))))\n")
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("TF_CPP_MIN_LOG_LEVEL", "HEARTWATCH_LOG_LEVEL")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPOSITORY,
                            env={**environment, "PYTHONPATH": REPOSITORY}, timeout=300, check=True)
    assert (result.stdout, result.stderr) == ("3.0\n", "")
