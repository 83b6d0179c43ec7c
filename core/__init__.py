"""tdx-stress's simulated machine: KVM's TDP MMU with mirror roots and the TDX module.

Knows no scheduler, CLI, file or report: it calls yield points through
:class:`core.sched.Scheduler` and reports findings to a :class:`core.findings.Recorder`.
"""
__version__ = "0.1.0"
