import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="session")
def text_encoder():
    from rmflow.tasks.text2image.text import shared_encoder
    return shared_encoder(None)


@pytest.fixture
def tiny_config():
    return _tiny_config


def _tiny_config(tmp_path, **over):
    """A digits config small enough for unit tests (everything cached under tmp_path)."""
    from rmflow.config import apply_overrides, build_config
    data = {"name": "t", "out_dir": str(tmp_path / "runs"),
            "task": {"name": "text2image", "dataset": "digits", "image_size": 8, "classifier_steps": 30,
                     "cache_dir": str(tmp_path / "cache")},
            "model": {"channels": 8, "channel_mult": [1, 2], "heads": 2, "num_tokens": 2, "encoder_hidden": 16,
                      "lora": {"rank": 2, "alpha": 4.0, "lr": 1e-2}},
            "flow": {"time": {"ratio_neq": 0.5}},
            "rmflow": {"lambda_nll": 0.5, "lambda_enc": 1e-3, "sigma_min": 0.05, "sigma_c": 1.0,
                       "pairing": "teacher", "teacher_steps": 2, "nll_start_step": 2, "teacher_bank": 64},
            "train": {"steps": 4, "batch_size": 8, "warmup_steps": 0, "ema_decay": 0.5, "progress": False,
                      "ckpt_every": 2, "log_every": 2},
            "eval": {"num_samples": 40, "samplers": ["rmflow"]}}
    return build_config(apply_overrides(data, [f"{k}={v}" for k, v in over.items()]))
