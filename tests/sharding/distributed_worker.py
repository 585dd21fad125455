"""One process of the two-process `jax.distributed` test: python -m tests.sharding.distributed_worker.

Each process owns one CPU device and half of the global batch. The processes meet at the coordinator
(127.0.0.1:port), build a ("data",) mesh over both devices, feed their local rows with
`jax.make_array_from_process_local_data`, and run one jitted data-parallel train step: parameters replicated,
the batch split over "data", the gradient all-reduced across the processes by XLA (gloo on the CPU).
Process 0 writes the loss and the updated parameters to --out (.npz).
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--process_id", type=int, required=True)
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import jax  # pylint: disable=import-outside-toplevel

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process collectives on CPUs
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}", num_processes=args.num_processes,
                               process_id=args.process_id, initialization_timeout=120)
    import numpy as np  # pylint: disable=import-outside-toplevel
    from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel

    from tests.sharding import distributed_step  # pylint: disable=import-outside-toplevel

    assert jax.process_count() == args.num_processes, jax.process_count()
    model, params, batch, optimizer, _ = distributed_step.build()
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    replicated = NamedSharding(mesh, P())
    rows = NamedSharding(mesh, P("data"))
    per_process = distributed_step.GLOBAL_BATCH // args.num_processes
    mine = slice(args.process_id * per_process, (args.process_id + 1) * per_process)
    global_batch = {name: jax.make_array_from_process_local_data(rows, value[mine], value.shape)
                    for name, value in batch.items()}
    params = jax.device_put(params, replicated)
    opt_state = jax.device_put(optimizer.init(params), replicated)
    step = jax.jit(distributed_step.make_step(model, optimizer), out_shardings=(replicated, replicated, replicated))
    params, opt_state, loss = step(params, opt_state, global_batch)
    # Replicated outputs: every process holds the whole value on its own device.
    local = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), params)
    if args.process_id == 0:
        np.savez(args.out, loss=np.asarray(loss.addressable_data(0)), **distributed_step.flat(local))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
