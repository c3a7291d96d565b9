"""The task end to end at toy size: shapes in an autoencoder latent space, both stages, table and grid."""
import json
import math



def test_shapes_latent_two_stage_run(tmp_path, text_encoder):
    from rmflow.config import read_yaml
    from rmflow.compare import compare
    base = read_yaml("shapes-cpu")
    base.update(name="toy", out_dir=str(tmp_path / "runs"), seeds=[0])
    base["task"].update(image_size=8, ae_downsample=1, latent_channels=2, num_train=64, num_test=8, ae_steps=5,
                        classifier_steps=5, cache_dir=str(tmp_path / "cache"))
    base["model"] = {"channels": 8, "heads": 2, "num_tokens": 2, "encoder_hidden": 16,
                     "lora": {"rank": 2, "alpha": 4.0}}
    base["rmflow"].update(nll_start_step=2, teacher_steps=2)
    base["train"].update(steps=3, batch_size=4, warmup_steps=0, ckpt_every=1, log_every=1, progress=False)
    base["eval"] = {"num_samples": 24}
    base["compare"] = {"meanflow": {"set": {"rmflow.lambda_nll": 0.0, "train.steps": 2, "model.lora.rank": 0},
                                    "samplers": ["meanflow@1"]},
                       "rmflow_lora": {"from": "meanflow", "set": {}, "samplers": ["rmflow"]}}
    out = compare(base, log=lambda *a: None)
    rows = json.loads((tmp_path / "runs" / "toy" / "results.json").read_text())
    assert [r["method"] for r in rows] == ["meanflow", "rmflow_lora", "data"]
    for r in rows:
        assert {"cfd", "acc", "acc_heldout", "acc_seen", "diversity", "acc_colour"} <= set(r)
        assert 0 <= r["acc"] <= 1 and (r["diversity"] >= 0 or math.isnan(r["diversity"]))   # nan: no repeats
    assert "held-out acc." in out["table"] and "classifier Fréchet dist." in out["table"]
    assert (tmp_path / "runs" / "toy" / "samples.png").stat().st_size > 0
    assert (tmp_path / "runs" / "toy" / "rmflow_lora-s0" / "adapter" / "adapter_config.json").exists()
    cache = {p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()}
    assert cache == {"autoencoder", "classifier", "text_embeddings.safetensors"}
