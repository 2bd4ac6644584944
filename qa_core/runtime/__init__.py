"""Where the model runs: the `ModelRunner` contract, the torch runner, and what surrounds them.

`runner.py` is the protocol the engine sees, `torch_runner.py` its torch implementation, `loaders/`
builds one from a checkpoint (one loader module per runtime, each with its checks; `certify.py` writes
the certificate that lets a checkpoint run on docqa's own encoder), `device_server.py` serves one model to
several worker processes, `processes.py` holds helpers of those spawned processes, and `host_tuning.py`
(over `heap.py`'s mechanisms) tunes the processes that the command-line jobs own.
"""
