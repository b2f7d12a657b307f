"""The README's figures, rendered from one results set (docs/results/readme/), so no number in it is typed by hand.

`bash experiments/readme_figures.sh` regenerates the set and calls this program's steps:

    python experiments/readme_figures.py facts RES              # variants.json (params, FLOPs), parity.json
    python experiments/readme_figures.py test-command           # the README's test command, as printed
    python experiments/readme_figures.py tests RES LOG SECONDS  # tests.json from the suite's log and wall time
    python experiments/readme_figures.py render RES             # README.md's marked blocks from the set

Each block of the README between ``<!-- results: NAME -->`` and ``<!-- /results -->`` is the output of
``render_blocks(RES)[NAME]``; tests/test_readme.py checks that they agree, so an edited figure or a set regenerated
without re-rendering fails the suite.
"""
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root: benchmarks/ is not installed
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "results" / "readme"
WIDTH = 118  # the README's line length

# The paper's ImageNet-1k top-1 (the spec's claims table; "~" where the paper gives M and L only in a plot).
PAPER_TOP1 = {"patnet_t0": "73.9", "patnet_t1": "78.1", "patnet_t2": "80.2", "patnet_s": "82.1",
              "patnet_m": "~83.1", "patnet_l": "~83.9"}
# The int8 issue's targets, PATNet / FasterNet latency (lower is better).
TARGETS = {"eager": 0.75, "onnxruntime": 0.70, "int8_t2": 0.70, "int8_t0": 0.90}
ACT_NAMES = {"gelu": "GELU", "relu": "ReLU"}
PAIRS = (("T2", "patnet_t2", "fasternet_t2"), ("T0", "patnet_t0", "fasternet_t0"))
RUNTIMES = (("eager", "eager fp32"), ("onnxruntime", "ONNX Runtime fp32"), ("onnxruntime-int8", "ONNX Runtime int8"),
            ("openvino-int8", "OpenVINO int8"))
BLOCK = re.compile(r"(<!-- results: (\w+) -->\n)(.*?)(<!-- /results -->)", flags=re.S)


def _load(res: Path, name: str) -> dict:
    return json.loads((res / name).read_text())


def _wrap(text: str) -> str:
    return "\n".join(textwrap.wrap(text, WIDTH, break_on_hyphens=False, break_long_words=False)) + "\n"


def _minutes(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def _sci(x: float) -> str:
    mantissa, exp = f"{x:.0e}".split("e")
    return f"{mantissa}e{int(exp)}"


def _ms(bench: dict, model: str, runtime: str) -> float:
    row = next(r for r in bench["rows"] if r["model"] == model)
    return row["latency_ms"][runtime]["1t"]["median"]


def _ratio(bench: dict, pair: tuple, runtime: str) -> float:
    _, ours, theirs = pair
    return _ms(bench, ours, runtime) / _ms(bench, theirs, runtime)


def _verdict(ratio: float, target: float) -> str:
    return "met" if round(ratio, 2) <= target else "**short**"


def _int8_winner(t2: float, t0: float) -> str:
    """Say plainly which family a user shipping int8 on this CPU should pick, where PATNet is not it."""
    slower = [size for size, r in (("T2", t2), ("T0", t0)) if round(r, 2) > 1]
    if not slower:
        return ""
    return f"; on this CPU FasterNet is the faster int8 model at {' and '.join(slower)}"


def bench_runs(res: Path) -> List[dict]:
    """The set's latency runs: bench.json (the table) and any repeats, in the order they ran."""
    return [_load(res, "bench.json")] + [_load(res, p.name) for p in sorted(res.glob("bench_run*.json"))]


def render_blocks(res: Path = RESULTS) -> Dict[str, str]:
    """Every marked block of the README, from the files of the results set ``res``."""
    job, tests, parity = _load(res, "main_job.json"), _load(res, "tests.json"), _load(res, "parity.json")
    q = {rt: _load(res, f"int8_{rt}.json") for rt in ("onnxruntime", "openvino")}
    variants, runs = _load(res, "variants.json"), bench_runs(res)
    bench = runs[0]
    env = bench["environment"]
    day = env["date"].split()[0]
    blocks = {}

    blocks["parity"] = _wrap(
        "The models compute exactly what the authors' code computes: reference vectors made by running it are "
        f"reproduced to within {_sci(parity['max_rel_error'])} of the largest logit (`tests/test_parity.py`). No "
        "pretrained PATNet weights are published by the authors, so none are downloaded; `patnet.from_official` loads "
        "theirs when you have them.")

    blocks["main_job"] = _wrap(
        "Main job: install, then train PATNet-T0 on Fashion-MNIST for two epochs at 64 px with the short recipe and "
        f"evaluate it ({_minutes(job['wall_seconds'])} wall on this project's 2-core Intel Xeon, {job['top1']:.2f}% "
        f"top-1 on the 10,000 test images, {day}; `outputs/quickstart/metrics.json` gets top-1, top-5, loss and "
        "images/s). Run as root, or put `sudo` before `apt-get`:")

    rows = ["| model | C | depths | act | PAT_sp | params (M) | FLOPs (G) | ImageNet top-1 (paper) |",
            "|---|---|---|---|---|---|---|---|"]
    for name, v in variants["variants"].items():
        rows.append(f"| {name} | {v['embed_dim']} | {'-'.join(map(str, v['depths']))} | {ACT_NAMES[v['act_layer']]} | "
                    f"{'yes' if v['spatial_attn'] else 'no'} | {v['params_m']:.2f} | {v['gflops']:.3f} | "
                    f"{PAPER_TOP1[name]} |")
    blocks["variants"] = "\n".join(rows) + "\n"

    settings = bench["settings"]
    libs = ", ".join(f"{k} {env[k].split('+')[0].split('-')[0]}" for k in ("torch", "onnxruntime", "openvino", "nncf")
                     if env.get(k))
    cpu = f"{env['cpu']}, {env['cpu_id']}" if env.get("cpu_id") else env["cpu"]
    command = ("python -m benchmarks.bench --models " + ",".join(r["model"] for r in bench["rows"])
               + " --runtime " + ",".join(r for r in settings["runtimes"] if r not in ("eager", "onnxruntime"))
               + f" --threads 1 --iters {settings['iters']} --warmup {settings['warmup']} --no-train-form --no-gpu")
    head = _wrap(f"{cpu} ({env['logical_cpus']} vCPUs; {', '.join(env['cpu_features'])}), 1 thread, batch 1, "
                 f"{settings['img_size']} px, median ms, {day}, {libs}, the four models interleaved in one process: "
                 f"`{command}`")
    table = ["| model | params (M) | GFLOPs | " + " | ".join(label for _, label in RUNTIMES) + " |",
             "|---|---|---|" + "---|" * len(RUNTIMES)]
    for pair in PAIRS:
        for model in pair[1:]:
            row = next(r for r in bench["rows"] if r["model"] == model)
            table.append(f"| {model} | {row['params_m']:.2f} | {row['gflops']:.3f} | "
                         + " | ".join(f"{_ms(bench, model, rt):.2f}" for rt, _ in RUNTIMES) + " |")
        table.append(f"| ratio {pair[0]} | | | " + " | ".join(f"{_ratio(bench, pair, rt):.2f}" for rt, _ in RUNTIMES)
                     + " |")
    t2, t0 = PAIRS
    eager, ort = _ratio(bench, t2, "eager"), _ratio(bench, t2, "onnxruntime")
    ov2, ov0 = _ratio(bench, t2, "openvino-int8"), _ratio(bench, t0, "openvino-int8")
    gains = [_ms(bench, m, "onnxruntime-int8") / _ms(bench, m, "openvino-int8") for m in
             ("patnet_t2", "fasternet_t2", "patnet_t0", "fasternet_t0")]
    fastest = ("OpenVINO is the fastest int8 runtime for both families" if min(gains) > 1 else
               "OpenVINO int8 is not faster than ONNX Runtime int8 for every model here")

    def across(pair: tuple, rt: str) -> str:
        return " / ".join(f"{_ratio(b, pair, rt):.2f}" for b in runs)

    eager_ms = [_ms(b, "patnet_t2", "eager") for b in runs]
    int8_met = _verdict(ov2, TARGETS["int8_t2"]) == _verdict(ov0, TARGETS["int8_t0"]) == "met"
    bullets = [
        f"- **fp32 leads**: PATNet-T2 is {eager:.2f}x FasterNet-T2 in PyTorch eager (target {TARGETS['eager']:.2f}: "
        f"{_verdict(eager, TARGETS['eager'])}) and {ort:.2f}x in ONNX Runtime fp32 (target "
        f"{TARGETS['onnxruntime']:.2f}: {_verdict(ort, TARGETS['onnxruntime'])}).",
        f"- **int8**: {fastest} ({sum(gains) / len(gains):.1f}x ONNX Runtime int8's speed on average). There "
        f"PATNet-T2 is {ov2:.2f}x FasterNet-T2 and PATNet-T0 {ov0:.2f}x, against targets of {TARGETS['int8_t2']:.2f} "
        f"and {TARGETS['int8_t0']:.2f}: {'met' if int8_met else '**short**'}{_int8_winner(ov2, ov0)}.",
    ]
    if len(runs) > 1:
        bullets.append(
            f"- **Spread**: the set runs the command {len(runs)} times in a row. PATNet-T2 / FasterNet-T2 was "
            f"{across(t2, 'openvino-int8')} in OpenVINO int8 and {across(t2, 'onnxruntime')} in ONNX Runtime fp32, "
            f"PATNet-T0 / FasterNet-T0 {across(t0, 'openvino-int8')} in OpenVINO int8, while PATNet-T2's eager "
            f"latency moved between {min(eager_ms):.2f} and {max(eager_ms):.2f} ms: on this shared 2-vCPU host the "
            "ratios taken within one run hold better than the absolute figures.")
    blocks["speed"] = head + "\n" + "\n".join(table) + "\n\n" + "".join(_wrap(b).replace("\n", "\n  ").rstrip(" ")
                                                                        for b in bullets)

    o, v = q["onnxruntime"], q["openvino"]
    blocks["int8_accuracy"] = _wrap(
        f"int8 accuracy: the main job's PATNet-T0 keeps its top-1 through int8 on all {o['eval_images']:,} test images "
        f"(calibrated on {o['calib_images']} training images): {o['top1_fp32']:.2f}% fp32 -> {o['top1_int8']:.2f}% "
        f"ONNX Runtime int8 and {v['top1_int8']:.2f}% OpenVINO int8 ({o['top1_agreement']:.2f}% / "
        f"{v['top1_agreement']:.2f}% top-1 agreement; the exported model's fp32 figure goes through timm's eval "
        f"transform, bicubic with crop 0.9, hence below the trainer's {job['top1']:.2f}%; "
        "[reports](docs/results/readme/)).")

    blocks["tests"] = _wrap(
        f"`{tests['command'].split('&& ')[-1]}` runs the whole suite on CPU on every core (pytest-xdist, slow tests "
        f"handed out first): {tests['passed']} tests, {_minutes(tests['wall_seconds'])} on the machine above "
        f"({tests['date']}, the README's command with its install step). `-m \"not slow\"` "
        f"({tests['not_slow']} tests) leaves out the tests of 5 s or more (two-process DDP, tiny detector training, "
        "timm's own model tests, compile and ExecuTorch lowering checks) for a quick loop. Speed and accuracy figures "
        "never come from tests: they come from `python -m benchmarks.bench` and the scripts in `experiments/`.")
    return blocks


def render_readme(res: Path = RESULTS, readme: Path = README) -> None:
    """Rewrite the README's marked blocks from ``res`` (atomically; the rest of the file is kept as it is)."""
    from patnet.io import atomic_path

    blocks = render_blocks(res)
    text = readme.read_text()
    found = {m.group(2) for m in BLOCK.finditer(text)}
    if found != set(blocks):
        raise SystemExit(f"README.md's results blocks are {sorted(found)}, the renderer has {sorted(blocks)}")
    new = BLOCK.sub(lambda m: m.group(1) + blocks[m.group(2)] + m.group(4), text)
    with atomic_path(readme) as tmp:
        tmp.write_text(new)


def readme_blocks(readme: Path = README) -> Dict[str, str]:
    return {m.group(2): m.group(3) for m in BLOCK.finditer(readme.read_text())}


def readme_test_command(readme: Path = README) -> str:
    """The README's test command, exactly as printed (its bash block that runs pytest)."""
    return next(b for b in re.findall(r"```bash\n(.*?)```", readme.read_text(), flags=re.S) if "pytest" in b).strip()


def write_facts(res: Path) -> None:
    """variants.json (params and FLOPs of every variant, 224 px, 1000 classes) and parity.json (the largest error
    against the authors' reference vectors, both attention paths)."""
    import timm
    import torch

    import patnet
    from patnet.flops import count_flops, count_params

    variants = {}
    for name, args in patnet.VARIANTS.items():
        model = timm.create_model(name).eval()
        variants[name] = {**{k: args[k] for k in ("embed_dim", "depths", "act_layer", "spatial_attn")},
                          "params_m": round(count_params(model) / 1e6, 2),
                          "gflops": round(count_flops(model) / 1e9, 3)}
    (res / "variants.json").write_text(json.dumps({"img_size": 224, "num_classes": 1000, "variants": variants},
                                                  indent=2))
    errors = {}
    for path in sorted((ROOT / "tests" / "data").glob("*.pt")):
        d = torch.load(path, weights_only=True)
        model = patnet.from_official(d["state_dict"], act_layer=d["config"]["act_layer"].lower())
        for fused in (True, False):
            for m in model.modules():
                if hasattr(m, "fused_attn"):
                    m.fused_attn = fused
            with torch.no_grad():
                out = model(d["input"])
            err = ((out - d["logits"]).abs().max() / d["logits"].abs().max()).item()
            errors[f"{path.name} fused_attn={fused}"] = err
    (res / "parity.json").write_text(json.dumps({"max_rel_error": max(errors.values()), "files": errors}, indent=2))


def write_tests(res: Path, log: Path, seconds: float) -> None:
    """tests.json: how many tests the README's command ran, in what wall time, and how many ``-m "not slow"`` keeps."""
    from benchmarks.machine import environment

    summary = log.read_text().strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    if not passed or re.search(r"failed|error", summary):
        raise SystemExit(f"the suite did not pass: {summary}")
    collected = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-m", "not slow"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip().splitlines()[-1]
    not_slow = int(re.match(r"(\d+)/\d+ tests collected", collected).group(1))
    record = {"command": readme_test_command(), "wall_seconds": round(seconds, 1), "passed": int(passed.group(1)),
              "not_slow": not_slow, "summary": summary, "date": environment()["date"].split()[0]}
    (res / "tests.json").write_text(json.dumps(record, indent=2))


def main(argv: List[str]) -> None:
    step, args = argv[0], argv[1:]
    if step == "facts":
        write_facts(Path(args[0]))
    elif step == "test-command":
        print(readme_test_command())
    elif step == "tests":
        write_tests(Path(args[0]), Path(args[1]), float(args[2]))
    elif step == "render":
        render_readme(Path(args[0]))
    else:
        raise SystemExit(f"unknown step {step!r}: facts, test-command, tests or render")


if __name__ == "__main__":
    main(sys.argv[1:])
