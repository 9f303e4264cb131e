"""`python tools/bench.py`: every case runs at tiny sizes and reports sane numbers; the markdown file grows by
one section a run and names the machine. No speed is asserted."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

import bench
from bench import build_parser, main

TINY = dict(iters=1, warmup=0, device="cpu")


def _check(r: bench.BenchResult, batch: int) -> None:
    assert r.batch == batch
    assert math.isfinite(r.images_per_s) and r.images_per_s > 0
    assert math.isfinite(r.peak_mib) and r.peak_mib >= 0
    assert r.seconds_per_iter > 0 and r.iters == 1
    assert r.device == "cpu" and r.precision == "fp32" and r.memory_method


@pytest.mark.parametrize("method", ["rpnet", "cam"])
def test_classifier_train(method: str) -> None:
    r = bench.classifier_train(method, "resnet18", crop=64, batch=1, group_size=2, **TINY)
    _check(r, 2)
    assert r.phase == "train" and ("RPNet" in r.stage) == (method == "rpnet")


def test_cam_inference() -> None:
    _check(bench.cam_inference("rpnet", "resnet18", image_size=(40, 56), scales=(1.0, 0.5), **TINY), 1)


def test_irn_train() -> None:
    _check(bench.irn_train("resnet18", crop=64, batch=2, radius=4, **TINY), 2)


def test_pseudo_mask_inference() -> None:
    r = bench.pseudo_mask_inference("resnet18", image_size=(40, 56), channels=2, exp_times=2, **TINY)
    _check(r, 1)
    assert "14x10" in r.input  # the stride-4 map of a 56x40 image


def test_deeplab_train_and_inference() -> None:
    _check(bench.deeplab_train("resnet18", crop=48, batch=2, **TINY), 2)
    _check(bench.deeplab_inference("resnet18", image_size=(40, 56), scales=(1.0, 0.75), **TINY), 1)


def test_measure_takes_median_and_counts_memory() -> None:
    def build():
        def step() -> None:
            torch.ones(4, 2 ** 20).sum()  # 16 MiB, freed at once
        return step

    sec, peak, n, method = bench.measure(build, torch.device("cpu"), iters=3, warmup=1)
    assert n == 3 and sec > 0 and peak >= 0 and method
    with pytest.raises(ValueError):
        bench.measure(build, torch.device("cpu"), iters=0)


def test_profiles_follow_the_paper() -> None:
    gpu, cpu = bench.PROFILES["gpu"], bench.PROFILES["cpu"]
    assert (gpu.classifier_backbone, gpu.irn_backbone, gpu.deeplab_backbone) == ("resnext50", "resnet50", "resnet50")
    assert (gpu.classifier_crop, gpu.classifier_batch, gpu.group_size) == (512, 8, 2)
    assert (gpu.irn_crop, gpu.irn_batch, gpu.deeplab_crop, gpu.deeplab_batch) == (512, 32, 321, 10)
    assert gpu.iters >= 10
    assert cpu.device == "cpu" and cpu.classifier_backbone == "resnet18"
    assert (cpu.classifier_crop, cpu.irn_crop, cpu.deeplab_crop) == (512, 512, 321)
    p = bench.get_profile("gpu", iters=2, backbone="resnet18", deeplab_crop=64)
    assert (p.iters, p.irn_backbone, p.deeplab_crop) == (2, "resnet18", 64)
    with pytest.raises(Exception):
        bench.get_profile("tpu")


def test_cli_case_choices_match_the_library() -> None:
    cases = next(a for a in build_parser()._actions if a.dest == "cases")
    assert tuple(cases.choices) == bench.CASES


def _fake_result(stage: str = "IRN", ips: float = 12.5) -> bench.BenchResult:
    return bench.BenchResult(stage=stage, phase="train", backbone="resnet18", input="crop 512", batch=2,
                             images_per_s=ips, peak_mib=321.4, seconds_per_iter=0.16, iters=3, device="cpu",
                             precision="fp32", memory_method="peak RSS")


def test_markdown_section_replaces_its_profile_s_and_names_the_machine(tmp_path: Path) -> None:
    out = tmp_path / "docs" / "benchmarks.md"
    machine = bench.machine_info()
    assert machine.cpu and machine.cores >= 1 and machine.torch == torch.__version__
    cpu, gpu = bench.PROFILES["cpu"], bench.PROFILES["gpu"]
    bench.write_section(out, bench.format_section([_fake_result("IRN", 12.5)], cpu, "python tools/bench.py --profile cpu", machine))
    text1 = out.read_text()
    assert text1.startswith("# Benchmarks") and "pending" in text1
    assert "\n## `make bench`: profile `cpu` on cpu\n" in text1 and "UTC" not in text1
    assert machine.cpu in text1 and f"torch {torch.__version__}" in text1
    assert "| IRN | train | resnet18 | crop 512 | 2 | 12.5 | 321 |" in text1
    assert "`python tools/bench.py --profile cpu`" in text1
    # another profile is appended after it; the same profile again replaces its own section in place
    bench.write_section(out, bench.format_section([_fake_result("DeepLab", 3.5)], gpu, "python tools/bench.py --profile gpu", machine))
    bench.write_section(out, bench.format_section([_fake_result("DeepLab", 7.25)], cpu, "python tools/bench.py --profile cpu", machine))
    text2 = out.read_text()
    assert text2.count("\n## ") == 2 and text2.count("# Benchmarks") == 1
    assert text2.index("profile `cpu`") < text2.index("profile `gpu`")  # kept its place
    assert "| DeepLab | train | resnet18 | crop 512 | 2 | 7.25 | 321 |" in text2 and "12.5" not in text2
    assert "| DeepLab | train | resnet18 | crop 512 | 2 | 3.5 | 321 |" in text2
    assert not list(out.parent.glob("*.tmp"))  # the atomic write left nothing behind


def test_cli_bench_writes_a_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    tiny = dataclasses.replace(bench.PROFILES["cpu"], classifier_crop=64, classifier_batch=1, image_size=(40, 56),
                               cam_scales=(1.0,))
    monkeypatch.setitem(bench.PROFILES, "cpu", tiny)
    out = tmp_path / "bench.md"
    args = ["--profile", "cpu", "--iters", "1", "--warmup", "0", "--cases", "classifier-cam", "cam",
            "--out", str(out)]
    assert main(args) == 0
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| classifier (CAM baseline) | train |" in printed and "images/s" in printed
    text = out.read_text()
    assert text.count("\n## ") == 1 and "profile `cpu` on cpu" in text  # the second run replaced the first
    assert "`python tools/bench.py --profile cpu --device cpu --iters 1 --warmup 0 --cases classifier-cam cam --out" in text


def test_cli_bench_without_cuda_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--profile", "gpu", "--no-write"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def _result(stage: str, seconds: float) -> bench.BenchResult:
    return bench.BenchResult(stage=stage, phase="train", backbone="resnet18", input="crop 64", batch=4,
                             images_per_s=4 / seconds, peak_mib=1.0, seconds_per_iter=seconds, iters=1, device="cpu",
                             precision="fp32", memory_method="x")


def test_step_ratio_and_its_line_in_the_section() -> None:
    results = [_result("classifier (RPNet)", 3.0), _result("classifier (CAM baseline)", 0.75)]
    assert bench.step_ratio(results) == 4.0
    assert bench.step_ratio(results[:1]) is None
    section = bench.format_section(results, bench.PROFILES["cpu"], "python tools/bench.py")
    assert "RPNet / CAM-baseline training step (same run, same batch): **4.0x**" in section
    # two layouts: one line each, labelled, and the table says which row is which
    cl = [dataclasses.replace(r, precision="fp32, channels_last") for r in
          (_result("classifier (RPNet)", 2.0), _result("classifier (CAM baseline)", 1.0))]
    assert bench.step_ratios(results + cl) == {"fp32": 4.0, "fp32, channels_last": 2.0}
    section = bench.format_section(results + cl, bench.PROFILES["cpu"], "python tools/bench.py")
    assert "(same run, same batch, fp32): **4.0x**" in section
    assert "(same run, same batch, fp32, channels_last): **2.0x**" in section
    assert "- Precision: fp32 / fp32, channels_last;" in section and "(fp32, channels_last) |" in section


def test_step_breakdown_names_every_part_of_the_step() -> None:
    rows = dict(bench.step_breakdown("rpnet", "resnet18", crop=64, batch=1, group_size=2, device="cpu", warmup=0))
    for scope in ("step/forward", "step/backward", "step/optimizer", "rpnet/backbone scale 1", "rpnet/head scale 1",
                  "rpnet/backbone extra scales", "rpnet/head extra scales", "rpnet/losses"):
        assert scope in rows and rows[scope] >= 0, scope
    inner = sum(v for k, v in rows.items() if k.startswith("rpnet/"))
    assert inner <= rows["step/forward"] * 1.05  # the model's scopes nest inside the forward
    cam = dict(bench.step_breakdown("cam", "resnet18", crop=64, batch=1, group_size=2, device="cpu", warmup=0))
    assert "cam/backbone" in cam and not any(k.startswith("rpnet/") for k in cam)
    table = bench.format_breakdown(list(rows.items()), "t")
    assert table.count("\n| ") == len(rows) + 1


def test_channels_last_case_is_labelled() -> None:
    r = bench.classifier_train("cam", "resnet18", crop=64, batch=1, group_size=2, channels_last=True, **TINY)
    assert r.precision == "fp32, channels_last" and r.images_per_s > 0


def test_classifier_pair_times_both_alternately() -> None:
    rp, cam = bench.classifier_pair("resnet18", crop=64, batch=1, group_size=2, iters=2, warmup=1, device="cpu")
    assert rp.stage == "classifier (RPNet)" and cam.stage == "classifier (CAM baseline)"
    assert rp.iters == cam.iters == 2 and "timed alternately" in rp.memory_method
    assert rp.seconds_per_iter > 0 and cam.seconds_per_iter > 0 and rp.peak_mib >= 0
    results = bench.run_profile(bench.get_profile("cpu", iters=1, warmup=0, classifier_crop=64, irn_crop=128),
                                "cpu", cases=["classifier-cam", "classifier-rpnet", "irn"])
    # the cpu profile times the pair in both layouts, contiguous first
    assert [r.stage for r in results][:4] == ["classifier (RPNet)", "classifier (CAM baseline)"] * 2
    assert [r.precision for r in results][:4] == ["fp32", "fp32", "fp32, channels_last", "fp32, channels_last"]
    assert bench.step_ratio(results) == pytest.approx(results[0].seconds_per_iter / results[1].seconds_per_iter)
    assert bench.step_ratios(results)["fp32, channels_last"] == pytest.approx(
        results[2].seconds_per_iter / results[3].seconds_per_iter)
    assert results[4].stage.startswith("IRN") and results[4].precision == "fp32"


def test_cli_bench_cudnn_benchmark_is_set_for_the_run_only(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """``--cudnn-benchmark`` (the first suspect of the bf16 + channels-last DeepLab
    slowdown on the GPU) holds for the timed cases and is named in the command line; off by default."""
    seen = []

    def fake_run_profile(profile, device, **kwargs):
        seen.append(torch.backends.cudnn.benchmark)
        return []

    monkeypatch.setattr(bench, "run_profile", fake_run_profile)
    before = torch.backends.cudnn.benchmark
    assert main(["--profile", "cpu", "--no-write", "--cudnn-benchmark"]) == 0
    assert main(["--profile", "cpu", "--no-write"]) == 0
    assert seen == [True, False] and torch.backends.cudnn.benchmark == before


def test_time_alternately_reverses_the_order_every_other_round() -> None:
    calls: list[str] = []
    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = bench.time_alternately(steps, torch.device("cpu"), iters=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert [len(v) for v in times.values()] == [3, 3] and all(t >= 0 for v in times.values() for t in v)
    with pytest.raises(ValueError, match="iters must be >= 1"):
        bench.time_alternately(steps, torch.device("cpu"), iters=0)
