import math

import pytest

from sqvae_speech.config import (
    ExperimentConfig,
    FeatureConfig,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    config_diff,
    dump_yaml,
    load_yaml,
)
from sqvae_speech.errors import ConfigError


def test_defaults_are_the_paper_protocol():
    cfg = ExperimentConfig()
    f, m, t = cfg.features, cfg.model, cfg.train
    assert (f.sample_rate, f.n_fft, f.win_length, f.hop_length, f.n_mels, f.fmin, f.pad_mode) == (16000, 2048, 400, 160, 80, 50.0, "reflect")
    assert (m.quantizer["num_embeddings"], m.quantizer["embedding_dim"], m.encoder.channels) == (512, 64, 768)
    assert math.isclose(m.quantizer["init_log_var"], math.log(10.0))
    assert (t.steps, t.batch_size, t.crop_frames, t.lr, t.milestones, t.gamma, t.grad_clip) == (500_000, 52, 32, 4e-4, (300_000, 400_000), 0.5, 1.0)


def test_yaml_round_trip(tmp_path):
    cfg = ExperimentConfig().replace(model=ModelConfig(variant="gaussian_3", speakers=("a", "b")))
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    back = ExperimentConfig.from_dict(load_yaml(path))
    assert back == cfg
    assert isinstance(back.model.speakers, tuple) and isinstance(back.train.milestones, tuple)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        ExperimentConfig.from_dict({"train": {"stepz": 3}}, where="conf/x.yaml")
    msg = str(e.value)
    assert "stepz" in msg and "conf/x.yaml" in msg and "steps" in msg and "batch_size" in msg


@pytest.mark.parametrize("section,key,value,needle", [
    ("train", "steps", -1, "train.steps"),
    ("train", "crop_frames", 31, "crop_frames"),
    ("train", "batching", "frames", "batching"),
    ("model", "variant", "gaussian_5", "gaussian_4"),
])
def test_nonsense_values_are_rejected(section, key, value, needle):
    with pytest.raises(ConfigError, match=needle):
        ExperimentConfig.from_dict({section: {key: value}})


def test_codebook_size_must_be_at_least_two():
    with pytest.raises(ConfigError, match="K"):
        ExperimentConfig.from_dict({"model": {"quantizer": {"num_embeddings": 1}}})


def test_overrides_and_diff():
    data = apply_overrides({"train": {"steps": 10}}, ["train.steps=20", "model.quantizer.num_embeddings=64", "model.variant=vqvae_ema"])
    cfg = ExperimentConfig.from_dict(data)
    assert cfg.train.steps == 20 and cfg.model.quantizer["num_embeddings"] == 64 and cfg.model.recon_kind == "mse"
    diff = config_diff(ExperimentConfig().to_dict(), cfg.to_dict(), sections=("model",))
    assert "model.quantizer.num_embeddings: 512 vs 64" in diff and "model.variant: 'gaussian_4' vs 'vqvae_ema'" in diff
    assert "model.quantizer.init_log_var: 2.302585092994046 vs '<missing>'" in diff  # each class its own arguments
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["nonsense"])


def test_temperature_schedule():
    t = TrainConfig(temperature_init=1.0, temperature_decay=1e-5, temperature_min=0.5)
    assert t.temperature(0) == 1.0
    assert math.isclose(t.temperature(10_000), math.exp(-0.1))
    assert t.temperature(10**7) == 0.5


def test_missing_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    assert FeatureConfig.from_dict({"n_mels": 40}).n_mels == 40


def test_quantizer_section_holds_the_variant_classes_arguments():
    """model.quantizer = the constructor arguments of the registry class model.variant names."""
    m = ExperimentConfig.from_dict({"model": {"variant": "vqvae_ema", "quantizer": {"decay": 0.99}}}).model
    assert m.quantizer == {"num_embeddings": 512, "embedding_dim": 64, "decay": 0.99, "epsilon": 1e-5,
                           "commitment_cost": 0.25, "init": "uniform", "init_count": 0.0,
                           "store_smoothed_count": True, "reset_unused": False, "reset_threshold": 0.1}
    with pytest.raises(ConfigError, match=r"c.yaml.*'decy' \(did you mean 'decay'\?\)"):
        ExperimentConfig.from_dict({"model": {"variant": "vqvae_ema", "quantizer": {"decy": 0.99}}}, where="c.yaml")
    with pytest.raises(ConfigError, match="sets variant='IV' itself"):
        ModelConfig(variant="gaussian_4", quantizer={"variant": "I"})
    with pytest.raises(ConfigError, match="quantizer 'gaussian_5' unknown; choose one of gaussian_1"):
        ModelConfig(variant="gaussian_5")
    # switching the variant keeps the shared arguments and drops the old class's own
    g = ModelConfig(variant="gaussian_4", quantizer={"num_embeddings": 64, "init_log_var": 1.0})
    v = g.replace(variant="fsq", quantizer={"levels": [8, 8], "num_embeddings": 64})
    assert v.quantizer["levels"] == [8, 8] and "init_log_var" not in v.quantizer
    k = g.replace(variant="vq_kmeans")
    assert k.quantizer["num_embeddings"] == 64 and "init_log_var" not in k.quantizer and k.recon_kind == "mse"
