"""Which Beam runner a `docqa run` job runs on, what it checks of Beam's options, and for how many cores.

`local_runner` sends the DirectRunner to Beam's FnApiRunner directly (no Prism download);
`workers_share_launcher_files` says whether the workers see this machine's disk (the launcher then checks
the model and answers with this machine's batch shape); `planned_cores` sizes the job's units.
"""

from __future__ import annotations

import os

from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
    TypeOptions,
    WorkerOptions,
)
from apache_beam.runners.runner import PipelineRunner

from qa_core.errors import ConfigError


def workers_share_launcher_files(options: PipelineOptions) -> bool:
    """True for runners whose workers see the launcher's disk (DirectRunner, LOOPBACK environments)."""
    view = options.get_all_options()
    runner = str(view.get("runner") or "DirectRunner")
    return "Direct" in runner or str(view.get("environment_type") or "").upper() == "LOOPBACK"


# Names under which Beam's DirectRunner is asked for (none given means DirectRunner).
_DIRECT_RUNNER_NAMES = (None, "DirectRunner", "SwitchingDirectRunner")


def local_runner(options: PipelineOptions) -> PipelineRunner | None:
    """The runner for a local job: Beam's FnApiRunner where the DirectRunner was asked for, else None.

    Beam's DirectRunner (2.77 and 2.78) first tries the Prism runner, which downloads a Go binary from
    GitHub at run time; offline, that attempt fails (leaving a temporary folder behind) and it falls back
    to the FnApiRunner. docqa's local job is tested on the FnApiRunner, so it goes there directly: no
    download, and the same runner online and offline. Its in-memory / multi-threading / multi-processing modes
    (`--direct_running_mode`, `--direct_num_workers`) work as under the DirectRunner. `--runner` names any
    other runner (PrismRunner included) unchanged: None lets Beam create it.
    """
    if options.view_as(StandardOptions).runner not in _DIRECT_RUNNER_NAMES:
        return None
    # Imported here, as the DirectRunner does: the runner modules pull in Beam's GCP clients.
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    # The same provisioning the DirectRunner gives the FnApiRunner: SDK worker processes read the job's
    # options from it.
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(provision))


def check_type_options(options: PipelineOptions) -> None:
    """Refuses Beam's runtime type checks, which would fail the job at its first rejected row.

    Beam (2.78) checks every output of a DoFn, tagged ones included, against the main output's type, so
    a rejection (tagged `rejections`) fails the check. The graph's types are checked when it is built
    (`pipeline_type_check`, on), against the hints each DoFn declares for each output.
    """
    types = options.view_as(TypeOptions)
    for flag in ("runtime_type_check", "performance_runtime_type_check"):
        if getattr(types, flag):
            raise ConfigError(
                f"--{flag}: Beam checks tagged outputs against the main output's type, so the first "
                "rejected row would fail the job; drop the flag (docqa run's graph is type-checked when "
                "it is built)"
            )


def planned_cores(options: PipelineOptions) -> int:
    """The cores a job's units are planned for (`plan_units`: at least two units per core).

    The rule: on the local FnApiRunner (the DirectRunner asked for, `local_runner`), the SDK workers
    `--direct_num_workers` asks for, 0 meaning this machine's CPUs; on other runners the workers
    `--max_num_workers`, else `--num_workers`, asks for (Dataflow and the like); with neither, this
    machine's CPUs (a portable job server here runs one SDK worker, a cluster's size is unknown here).
    `output.task_rows` still caps every unit, so a large input gets many units whatever this says.
    """
    cpus = os.cpu_count() or 1
    if options.view_as(StandardOptions).runner in _DIRECT_RUNNER_NAMES:
        asked = options.view_as(DirectOptions).direct_num_workers
        return int(asked) if asked and asked > 0 else cpus
    workers = options.view_as(WorkerOptions)
    asked = workers.max_num_workers or workers.num_workers
    return int(asked) if asked and asked > 0 else cpus
