import pytest

from rmflow.config import ConfigError, apply_overrides, load_config, parse_sampler, read_yaml


def test_presets_load_and_overrides_apply():
    cfg = load_config("ring", ["train.steps=12", "rmflow.pairing=minibatch_ot", "flow.time.ratio_neq=0.5"])
    assert cfg.train.steps == 12 and cfg.rmflow.pairing == "minibatch_ot" and cfg.flow.time.ratio_neq == 0.5
    assert cfg.task.dataset == "ring8" and cfg.model.hidden == 256


@pytest.mark.parametrize("override,key", [
    (["flow.sigma=0.2", "rmflow.sigma_min=0.1"], "rmflow.sigma_min"),
    (["rmflow.lambda_nll=-1"], "rmflow.lambda_nll"),
    (["rmflow.sigma_c=-0.1"], "rmflow.sigma_c"),
    (["rmflow.pairing=nearest"], "rmflow.pairing"),
    (["train.lr=0"], "train.lr"),
    (["train.adam_beta2=1"], "train.adam_beta2"),
    (["train.stepz=3"], "train.stepz"),
    (["task.dataset=spiral"], "task.dataset"),
    (["model.depth=0"], "model.depth"),
    (["train.steps=many"], "train.steps"),
    (["eval.samplers=[meanflow@0]"], "eval.samplers[0]"),
    (["rmflow.nll_start_step=0"], "rmflow.nll_start_step"),
    (["train.lr_schedule=step"], "train.lr_schedule"),
    (["train.lr_decay_start=12000"], "train.lr_decay_start"),
    (["rmflow.refine=mixtures"], "rmflow.refine"),
    (["rmflow.mixture_components=1"], "rmflow.mixture_components"),
    (["rmflow.mixture_pick=mode"], "rmflow.mixture_pick"),
    (["rmflow.batch_split=true", "rmflow.nll_batch=1"], "rmflow.batch_split"),
    (["rmflow.focus_errors=old"], "rmflow.focus_errors"),
    (["rmflow.focus_errors=stored", "rmflow.nll_focus=0"], "rmflow.focus_errors"),
])
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config("ring", override)


@pytest.mark.parametrize("override,stored", [
    ([], True),                                               # the default: a bank and a focus -> stored errors
    (["rmflow.nll_focus=0"], False), (["rmflow.teacher_bank=0", "rmflow.teacher_filter=0"], False),
    (["rmflow.focus_errors=fresh"], False), (["rmflow.focus_errors=stored"], True)])
def test_focus_errors_auto_reads_stored_errors_only_with_a_bank_and_a_focus(override, stored):
    assert load_config("ring", override).rmflow.stored_focus_errors is stored


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="ring"):
        read_yaml("no-such-preset")


def test_override_syntax():
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["train.steps"])
    assert apply_overrides({}, ["a.b.c=[1, 2]"]) == {"a": {"b": {"c": [1, 2]}}}


def test_parse_sampler():
    assert parse_sampler("meanflow@8") == ("meanflow", 8)
    assert parse_sampler("fm") == ("fm", 100)
    assert parse_sampler("rmflow") == ("rmflow", 1)
    with pytest.raises(ValueError):
        parse_sampler("rmflow@4")
