"""`python -m pallas_kernels.bench {attention,matmul,moe} [--implementation pallas] [--quick] [--out F]`.

Prints a table per op (time, achieved GB/s and TFLOP/s, the fraction of the roofline, the ratio
against peers on the same shapes) and writes JSON (default benchmarks/results/kernels-<op>.json).
An op's module may add `summary(rows)`: lines printed under the table and kept in the JSON (moe: the
token count where `moe_gmm` overtakes `moe_gemv`).
On CPU the default is `--implementation interpret` with `--quick` shapes: it checks that the bench
runs, not how fast a kernel is.
"""

from __future__ import annotations

import argparse

import jax

from pallas_kernels import benchmarking
from pallas_kernels.bi_matmul import bench as matmul_bench
from pallas_kernels.moe import bench as moe_bench
from pallas_kernels.split_kv_attention import bench as attention_bench

OPS = {"attention": attention_bench, "matmul": matmul_bench, "moe": moe_bench}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("op", choices=sorted(OPS))
    on_cpu = jax.default_backend() == "cpu"
    parser.add_argument("--implementation", default="interpret" if on_cpu else "pallas")
    parser.add_argument("--quick", action="store_true", default=on_cpu, help="small shapes (default on CPU)")
    parser.add_argument("--iters", type=int, default=3 if on_cpu else 20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    print(benchmarking.device_line())
    bandwidth = benchmarking.measured_bandwidth()
    print(f"measured copy bandwidth: {bandwidth / 1e9:.1f} GB/s · implementation {args.implementation}\n")
    module = OPS[args.op]
    rows = module.run(implementation=args.implementation, quick=args.quick, bandwidth=bandwidth, iters=args.iters)
    benchmarking.print_table(rows, module.COLUMNS)
    summary = module.summary(rows) if hasattr(module, "summary") else []
    if summary:
        print("\n" + "\n".join(summary))
    record = {
        "op": args.op,
        "device": benchmarking.device_line(),
        "implementation": args.implementation,
        "bandwidth_bytes_per_s": bandwidth,
        "rows": rows,
    }
    if summary:
        record["summary"] = summary
    out = benchmarking.write_json(args.out or f"benchmarks/results/kernels-{args.op}.json", record)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
