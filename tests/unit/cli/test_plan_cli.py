"""`gpupool plan ...` end to end through the real Typer app: tables, --json, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpupool.cli.main import app

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["plan", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_train_prints_every_term_with_its_formula() -> None:
    code, out, _ = _run("train", "--params", "7B", "--seq", "4096", "--micro-batch", "1",
                        "--gpus", "8xA100-80GB", "--zero", "2")
    assert code == 0
    assert "Training 7B params on 8 x A100-80GB: TP 1 x PP 1 x DP 8, ZeRO-2" in out
    for label, formula in [("Weights", "2 B x P"), ("Gradients", "2 B x P / dp"),
                           ("Optimizer states (adam, K=12)", "12 B x P / dp"),
                           ("Activations per layer", "s b h (34)"), ("Total per GPU", "weights + gradients")]:
        assert label in out and formula in out
    assert "Rajbhandari et al. 2020 (ZeRO)" in out and "Korthikanti et al. 2022" in out
    assert "Fits:" in out


def test_train_json_has_the_summary_and_terms() -> None:
    code, out, _ = _run("train", "--model", "gpt-3-175b", "--seq", "2048", "--gpus", "64xA100-80GB",
                        "--tokens", "300B", "--json")
    assert code == 0
    answer = json.loads(out)
    terms = {t["key"]: t for t in answer["terms"]}
    assert terms["flops"]["value"] == pytest.approx(3.15e23)
    assert terms["time_full_mfu"]["value"] / 86400 == pytest.approx(182.6, rel=0.01)
    assert answer["summary"]["fits"] is True
    assert answer["inputs"]["gpus"] == 64


def test_serve_table_and_json() -> None:
    args = ("serve", "--model", "llama-3-70b", "--gpu", "H100", "--context", "8192", "--batch", "32")
    code, out, _ = _run(*args)
    assert code == 0
    assert "Serving llama-3-70b on H100-SXM: 4 GPU(s) per replica" in out
    assert "320.00 KiB" in out and "2 x 80 layers x 1024 (kv_heads x head_dim) x 2 B" in out
    code, out, _ = _run(*args, "--json")
    assert json.loads(out)["summary"]["max_sequences"] == 62


def test_serve_decode_bound_for_a_moe_on_one_h20_and_on_a_cpu() -> None:
    code, out, _ = _run("serve", "--model", "deepseek-v3", "--gpu", "1xH20", "--precision", "fp8",
                        "--context", "4096", "--json")
    # 671B parameters at fp8 are ~625 GiB: they do not fit one 96 GB H20, so the answer comes with exit 1
    assert code == 1 and json.loads(out)["summary"]["fits"] is False
    assert json.loads(out)["summary"]["decode_latency"] == pytest.approx(9.25e-3)
    code, out, _ = _run("serve", "--model", "deepseek-v3", "--gpu", "1xH20", "--precision", "fp8",
                        "--context", "4096", "--bandwidth", "64GB/s", "--json")
    assert json.loads(out)["summary"]["decode_latency"] == pytest.approx(0.578, rel=0.01)


def test_mig_table_and_json() -> None:
    code, out, _ = _run("mig", "A100-40GB", "--sm", "28", "--memory", "10GiB")
    assert code == 0
    assert "MIG on A100-40GB: 3 x 2g.10gb per GPU" in out
    assert "ceil(28 SMs / 14 SMs per slice)" in out and "<- fits" in out
    code, out, _ = _run("mig", "A100-40GB", "--sm", "28", "--memory", "10GiB", "--json")
    assert json.loads(out)["summary"] == {"fits": True, "profile": "2g.10gb", "instances": 3}


def test_catalog_listings() -> None:
    code, out, _ = _run("gpus")
    assert code == 0 and "H100-SXM" in out and "RTX-4090" in out
    code, out, _ = _run("gpus", "--json")
    assert {g["name"] for g in json.loads(out)} >= {"A100-40GB", "H20", "T4"}
    code, out, _ = _run("models")
    assert code == 0 and "deepseek-v3" in out


def test_a_user_catalog_adds_a_gpu(tmp_path: Path) -> None:
    path = tmp_path / "gpus.yaml"
    path.write_text(
        "gpus:\n  - {name: B200, memory_gib: 180, memory_bandwidth_gbps: 8000, bf16_tflops: 2250}\n"
    )
    code, out, _ = _run("serve", "--model", "llama-3-70b", "--gpu", "B200", "--context", "8192",
                        "--catalog", str(path), "--json")
    assert code == 0
    assert json.loads(out)["summary"]["gpus_per_replica"] == 1  # 131.5 GiB + 2.5 GiB <= 162 GiB


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train", "--gpus", "8xA100", "--seq", "4096"), "error: no model given: pass --model NAME"),
        (("train", "--gpus", "8xB300", "--seq", "4096", "--params", "7B"),
         "error: --gpus: unknown GPU 'B300'"),
        (("train", "--gpus", "8xA100", "--seq", "4096", "--params", "7B", "--layers", "80",
          "--hidden", "8192", "--heads", "64"),
         "error: inconsistent model: --params 7B but --layers 80 --hidden 8192 imply"),
        (("train", "--gpus", "8xA100", "--seq", "4096", "--model", "llama-2-7b", "--params", "7B"),
         "error: give either --model or the model's numbers"),
        (("train", "--gpus", "6xA100", "--seq", "4096", "--params", "7B", "--tp", "4"),
         "error: 6 GPUs cannot be split into tp x pp = 4"),
        (("train", "--gpus", "8xA100", "--seq", "4096", "--params", "7Q"),
         "error: --params: unknown suffix 'Q'"),
        (("train", "--gpus", "8xA100", "--seq", "4096", "--params", "7B", "--catalog", "/no/such.yaml"),
         "error: --catalog: cannot read /no/such.yaml"),
        (("serve", "--gpu", "H100", "--context", "4096", "--model", "llama-9"),
         "error: unknown model 'llama-9'"),
        (("serve", "--gpu", "H100", "--context", "4096", "--params", "7B", "--precision", "fp9"),
         "error: --precision: unknown precision 'fp9'"),
        (("mig", "L4", "--memory", "10GiB"), "error: L4 does not support MIG"),
        (("mig", "A100-40GB"), "error: give the instance size"),
        (("mig", "A100-40GB", "--memory", "ten"), "error: --memory: cannot read 'ten'"),
        (("train", "--gpus", "8xA100", "--seq", "4096", "--params", "7B", "--tp", "0"),
         "error: --tp must be at least 1, got 0"),
        (("train", "--gpus", "8xA100", "--seq", "4096", "--layers", "32", "--hidden", "0", "--heads", "32"),
         "error: --hidden must be positive, got 0"),
        (("serve", "--gpu", "H100", "--context", "4096", "--params", "7B", "--bandwidth", "0GB/s"),
         "error: --bandwidth: '0GB' must be a positive number"),
    ],
)
def test_errors_are_one_clear_line_without_a_traceback(args: tuple[str, ...], message: str) -> None:
    code, out, err = _run(*args)
    assert code == 2
    assert message in err
    assert "Traceback" not in out + err
    assert out == ""


def test_an_answer_that_does_not_fit_exits_1_not_like_a_usage_error() -> None:
    # 175B parameters: 2 B x 175e9 = 326 GiB of weights alone, more than one 80 GiB card
    code, out, err = _run("train", "--params", "175B", "--seq", "2048", "--gpus", "1xA100-80GB")
    assert code == 1 and "Training 175B params" in out and err == ""
    # no MIG profile has 120 SMs (the largest H100 instance, 7g, has 7 x 16 = 112): an answer, exit 1
    code, out, _ = _run("mig", "H100", "--sm", "120", "--json")
    assert code == 1 and json.loads(out)["summary"]["fits"] is False


def test_more_sms_than_the_gpu_has_is_an_input_error() -> None:
    code, out, err = _run("mig", "H100", "--sm", "200")
    assert code == 2 and out == ""
    assert "error: the H100-SXM has 132 SMs; --sm 200 is more than the whole GPU" in err
    code, out, _ = _run("mig", "H100", "--sm", "200", "--json")
    assert code == 2
    assert json.loads(out)["error"] == {"kind": "plan_input_error", "field": None, "exit_code": 2, "message": (
        "the H100-SXM has 132 SMs; --sm 200 is more than the whole GPU, and a MIG instance is a part of one")}


def test_a_missing_required_option_is_a_usage_error() -> None:
    code, _, err = _run("train", "--params", "7B", "--gpus", "8xA100")
    assert code == 2
    assert "Missing option '--seq'" in err and "Traceback" not in err


def test_plan_is_registered_on_the_root_app() -> None:
    result = runner.invoke(app, ["plan", "--help"])
    assert result.exit_code == 0
    for command in ("train", "serve", "mig", "gpus", "models"):
        assert command in result.stdout
