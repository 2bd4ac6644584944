"""Where the model runs: the `ModelRunner` contract, the torch runner, and what surrounds them.

`runner.py` is the protocol the engine sees, `torch_runner.py` its Hugging Face implementation,
`loading.py` builds one from a checkpoint with the safety checks, `device_server.py` serves one model to
several worker processes, `processes.py` holds helpers of those spawned processes, and `heap.py` keeps a
long CPU job's memory flat.
"""
