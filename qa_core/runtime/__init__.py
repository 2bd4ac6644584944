"""Where the model runs: the `ModelRunner` contract, the torch runner, and what surrounds them.

`runner.py` is the protocol the engine sees, `torch_runner.py` its torch implementation, `loaders/`
builds one from a checkpoint (one loader module per runtime, each with its checks; `certify.py` writes
the certificate that lets a checkpoint run on docqa's own encoder), `device_server.py` serves one model to
several worker processes, `processes.py` holds helpers of those spawned processes, and `heap.py` keeps a
long CPU job's memory flat.
"""
