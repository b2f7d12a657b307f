"""Speed benchmarks: not part of the installed package (as timm keeps its benchmark.py outside ``timm``).

Run from the repository root: ``python -m benchmarks.bench --models patnet_t2,fasternet_t2`` (latency of any
models, every runtime interleaved) and ``python -m benchmarks.peers`` (PATNet among timm's efficient backbones).
``benchmarks.machine`` names the machine a figure was taken on; the experiments use it too.
"""
