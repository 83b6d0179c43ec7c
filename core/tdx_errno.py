"""SEAMCALL status codes, named as in the kernel's tdx_errno.h and valued as in the TDX
module 1.5.01 (intel/tdx-module TDX_1.5.01, 72d8cffb,
include/auto_gen/tdx_error_codes_defs.h).

The low 32 bits carry detail (the operand id of a busy lock); compare statuses with
:func:`status`.
"""
from __future__ import annotations

TDX_SUCCESS = 0
TDX_SEAMCALL_STATUS_MASK = 0xFFFFFFFF00000000

TDX_OPERAND_INVALID = 0xC000010000000000
TDX_OPERAND_BUSY = 0x8000020000000000
TDX_PREVIOUS_TLB_EPOCH_BUSY = 0x8000020100000000
TDX_OPERAND_BUSY_HOST_PRIORITY = 0x8000020400000000
TDX_LIFECYCLE_STATE_INCORRECT = 0xC000060700000000
TDX_OP_STATE_INCORRECT = 0xC000060800000000  # the TD is in the wrong state for the call
TDX_EPT_WALK_FAILED = 0xC0000B0000000000
TDX_EPT_ENTRY_FREE = 0xC0000B0100000000
TDX_EPT_ENTRY_NOT_FREE = 0xC0000B0200000000
TDX_EPT_ENTRY_NOT_LEAF = 0xC0000B0400000000
TDX_GPA_RANGE_NOT_BLOCKED = 0xC0000B0600000000
TDX_GPA_RANGE_ALREADY_BLOCKED = 0x00000B0700000000
TDX_TLB_TRACKING_NOT_DONE = 0xC0000B0800000000
TDX_EPT_INVALID_PROMOTE_CONDITIONS = 0xC0000B0900000000
TDX_PAGE_ALREADY_ACCEPTED = 0x00000B0A00000000
TDX_PAGE_SIZE_MISMATCH = 0xC0000B0B00000000
TDX_EPT_PAGE_NOT_FREE = 0xC0000B0E00000000
TDX_EPT_ENTRY_STATE_INCORRECT = 0xC0000B0D00000000
TDX_TD_KEYS_NOT_CONFIGURED = 0x8000081000000000  # the TD is past TDH.MNG.VPFLUSHDONE
TDX_HOST_PRIORITY_BUSY_TIMEOUT = 0x9000020500000000

# Operand ids (low bits of a busy status): which lock was taken.
TDX_OPERAND_ID_RCX = 0x01
TDX_OPERAND_ID_TDR = 0x80
TDX_OPERAND_ID_TDVPR = 0x82
TDX_OPERAND_ID_SEPT = 0x92          # OPERAND_ID_SEPT_TREE: the S-EPT tree lock
TDX_OPERAND_ID_TD_EPOCH = 0xA9

NAMES = {v: k for k, v in dict(globals()).items()
         if k.startswith("TDX_") and isinstance(v, int) and "OPERAND_ID" not in k
         and k != "TDX_SEAMCALL_STATUS_MASK"}


def status(err: int) -> int:
    """The status part of a SEAMCALL return value."""
    return err & TDX_SEAMCALL_STATUS_MASK


def tdx_operand_busy(err: int) -> bool:
    """tdx.c tdx_operand_busy(): BUSY of a lock, including the host-priority flavour."""
    return (err & TDX_SEAMCALL_STATUS_MASK) in _BUSY      # status(err) in _BUSY


_BUSY = (TDX_OPERAND_BUSY, TDX_OPERAND_BUSY_HOST_PRIORITY)


def name(err: int) -> str:
    """The kernel's name for an error, with the operand id when there is one."""
    base = NAMES.get(status(err), f"{status(err):#x}")
    detail = err & 0xFFFFFFFF
    return f"{base}({detail:#x})" if detail else base
