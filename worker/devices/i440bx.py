"""The Intel 82443BX host bridge (440BX, "AGP disabled" form, 8086:7192) at 00:00.0: the
host bridge of a Hyper-V generation-1 VM.

Only its configuration header is built: the identity and the PAM registers.

Policies:

* The Programmable Attribute Map registers (PAM0-PAM6, 59h-5Fh) keep what is written to
  their read/write-enable bits, but they map nothing: 0xC0000-0xFFFFF is always the VP's
  shadow RAM, written by the firmware loader (``partitions/cpu/boot.py``).  SeaBIOS looks
  for QEMU's i440FX (8086:1237) or Q35 to program them and leaves a 440BX alone
  ("Unable to unlock ram - bridge not found"), which is harmless here for that reason.
* The DRAM, SMRAM and AGP registers are not built (they read 0).
"""

from __future__ import annotations

from worker.devices.pci_function import PciFunction

VENDOR_INTEL = 0x8086
DEVICE_82443BX_NO_AGP = 0x7192
CLASS_HOST_BRIDGE = 0x060000
REVISION = 0x03
PAM0 = 0x59  # F0000h-FFFFFh in bits 5:4
PAM_HALVES = 0x33  # PAM1-6: two 16 KiB segments, RE/WE in bits 1:0 and 5:4


def i440bx_host_bridge() -> PciFunction:
    writable = {PAM0: 0x30, **{PAM0 + i: PAM_HALVES for i in range(1, 7)}}
    return PciFunction("i440bx", VENDOR_INTEL, DEVICE_82443BX_NO_AGP, CLASS_HOST_BRIDGE,
                       revision=REVISION, writable=writable)
