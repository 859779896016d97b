"""One process of a two-process JAX program on this machine (`jax.distributed.initialize`
on localhost, one CPU device each), run by tests/test_sharding.py: the command line's
`run` with the examples split over both processes' devices.

`python -m tests.multihost_check PORT PROCESS_ID CONFIG OUT` prints one JSON line: this
process's index, the devices it sees (its own and all), and `centralflows run`'s exit
status.
"""

import json
import sys

import jax

if __name__ == "__main__":
    port, process_id, config, out = sys.argv[1:]
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}", num_processes=2, process_id=int(process_id)
    )
    from centralflows.cli import main

    argv = ["run", config, "--set", "run.devices=2", "--out", out, "--name", "two", "--quiet"]
    status = main(argv)
    devices = {"local": jax.local_device_count(), "all": jax.device_count()}
    print(json.dumps({"process": jax.process_index(), "devices": devices, "status": status}))
