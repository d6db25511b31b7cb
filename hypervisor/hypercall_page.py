"""The hypercall page's contents, written by the hypervisor (TLFS: "the hypervisor
overlays the page with the code sequence"; its contents are the hypervisor's choice).

The guest calls the page with the TLFS register convention (RCX control, RDX input, R8
output in 64-bit mode; EDX:EAX, EBX:ECX, EDI:ESI in 32-bit mode) and the page executes
``out HYPERCALL_PORT, eax; ret``.  A port-I/O exit is what both real-CPU backends can take in
user space: KVM handles VMCALL itself (it never reaches the VMM without KVM's own Hyper-V
support) and unicorn cannot hook it, while an OUT exits from both, with the argument
registers intact (see ``partitions/cpu/exitport.py``, which turns it into the
HypercallIntercept the Python guest sends).  The same bytes run in real, 32- and 64-bit mode.
"""

from __future__ import annotations

from proto.codes import HYPERCALL_PAGE_PORT
from proto.memory import PAGE_SIZE

HYPERCALL_PORT = HYPERCALL_PAGE_PORT
HYPERCALL_PAGE_CODE = bytes((0xE7, HYPERCALL_PORT, 0xC3))  # out imm8, eax; ret
FILL = 0xCC  # int3 past the code: a guest that jumps into the page elsewhere traps


def write(memory, partition: int, msr_value: int) -> bool:
    """Fill the page that HV_X64_MSR_HYPERCALL (enabled) names in ``partition``'s RAM;
    False when the page is not RAM (the MSR keeps the value, the guest calls nothing)."""
    gpa = msr_value & ~(PAGE_SIZE - 1) & 0xFFFFFFFFFFFFFFFF
    slat = memory.slats.get(partition)
    if slat is None or memory.ram_offset(partition, gpa) is None:
        return False
    page = HYPERCALL_PAGE_CODE + bytes((FILL,)) * (PAGE_SIZE - len(HYPERCALL_PAGE_CODE))
    slat.ram[gpa:gpa + PAGE_SIZE] = page
    return True
