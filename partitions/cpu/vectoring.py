"""Taking an interrupt or exception through the guest's own IVT or IDT, for an emulator
that does not (unicorn vectors nothing itself: every INT n, every exception and every
external interrupt comes to us).  What the CPU does on delivery (Intel SDM vol. 3, 6.12 and
20.1.4), for the cases a firmware or a small kernel meets:

* real mode: push FLAGS, CS, IP; clear IF, TF and AC; CS:IP from the IVT at vector × 4;
* 32-bit protected mode, ring 0, flat stack: push EFLAGS, CS, EIP (and the error code of
  #DF, #TS, #NP, #SS, #GP, #PF, #AC); CS:EIP from the IDT gate; an interrupt gate clears
  IF, a trap gate does not.

* long mode, ring 0, no IST: align RSP to 16, push SS, RSP, RFLAGS, CS, RIP (and the error
  code); CS:RIP from the 16-byte IDT gate; IF as for 32-bit gates.

Privilege changes and IST stacks are not handled: :class:`CannotVector` says so and the VP
stops, as a triple fault would stop it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

CR0_PE = 1 << 0
EFER_LMA = 1 << 10
RFLAGS_TF = 1 << 8
RFLAGS_IF = 1 << 9
RFLAGS_AC = 1 << 18
ERROR_CODE_VECTORS = frozenset((8, 10, 11, 12, 13, 14, 17))
GATE_INTERRUPT_32 = 0xE
GATE_TRAP_32 = 0xF


class CannotVector(Exception):
    """The CPU state is one this module does not deliver in (or the gate is not there)."""


@dataclass
class CpuState:
    """What delivery reads and writes, as the backend exposes it."""

    cr0: int
    efer: int
    rflags: int
    cs: int
    rip: int
    rsp: int
    ss: int
    idt_base: int
    idt_limit: int


def vector(state: CpuState, number: int, read: Callable[[int, int], bytes],
           write: Callable[[int, bytes], None], error_code: int | None = None) -> CpuState:
    """The state after taking ``number`` (``rip`` is where it returns to); ``read`` and
    ``write`` reach guest memory by linear address (no paging here)."""
    s = state
    if s.efer & EFER_LMA:
        return _vector_long(s, number, read, write, error_code)
    if not s.cr0 & CR0_PE:
        if number * 4 + 3 > s.idt_limit:
            raise CannotVector(f"vector {number:#x} beyond the IVT (limit {s.idt_limit:#x})")
        ivt = read(s.idt_base + number * 4, 4)
        sp = s.rsp & 0xFFFF
        ss_base = s.ss << 4
        for value in (s.rflags, s.cs, s.rip):
            sp = (sp - 2) & 0xFFFF
            write(ss_base + sp, (value & 0xFFFF).to_bytes(2, "little"))
        return CpuState(s.cr0, s.efer, s.rflags & ~(RFLAGS_IF | RFLAGS_TF | RFLAGS_AC),
                        int.from_bytes(ivt[2:4], "little"), int.from_bytes(ivt[0:2], "little"),
                        (s.rsp & ~0xFFFF) | sp, s.ss, s.idt_base, s.idt_limit)
    if number * 8 + 7 > s.idt_limit:
        raise CannotVector(f"vector {number:#x} beyond the IDT (limit {s.idt_limit:#x})")
    gate = read(s.idt_base + number * 8, 8)
    kind = gate[5] & 0x1F
    if not gate[5] & 0x80 or kind not in (GATE_INTERRUPT_32, GATE_TRAP_32):
        raise CannotVector(f"IDT entry {number:#x} is not a present 32-bit interrupt or trap gate")
    if s.cs & 3:
        raise CannotVector(f"vector {number:#x} from ring {s.cs & 3} (privilege changes are not implemented)")
    offset = int.from_bytes(gate[0:2], "little") | int.from_bytes(gate[6:8], "little") << 16
    selector = int.from_bytes(gate[2:4], "little")
    return _enter_gate(s, number, error_code, kind, selector, offset, s.rsp & 0xFFFFFFFF,
                       [s.rflags, s.cs, s.rip], 4, write)


def _vector_long(s: CpuState, number: int, read, write, error_code: int | None) -> CpuState:
    if number * 16 + 15 > s.idt_limit:
        raise CannotVector(f"vector {number:#x} beyond the IDT (limit {s.idt_limit:#x})")
    gate = read(s.idt_base + number * 16, 16)
    kind = gate[5] & 0x1F
    if not gate[5] & 0x80 or kind not in (GATE_INTERRUPT_32, GATE_TRAP_32):
        raise CannotVector(f"IDT entry {number:#x} is not a present 64-bit interrupt or trap gate")
    if gate[4] & 7:
        raise CannotVector(f"IDT entry {number:#x} uses IST {gate[4] & 7} (not implemented)")
    if s.cs & 3:
        raise CannotVector(f"vector {number:#x} from ring {s.cs & 3} (privilege changes are not implemented)")
    offset = (int.from_bytes(gate[0:2], "little") | int.from_bytes(gate[6:8], "little") << 16
              | int.from_bytes(gate[8:12], "little") << 32)
    selector = int.from_bytes(gate[2:4], "little")
    return _enter_gate(s, number, error_code, kind, selector, offset, s.rsp & ~0xF & 0xFFFFFFFFFFFFFFFF,
                       [s.ss, s.rsp, s.rflags, s.cs, s.rip], 8, write)


def _enter_gate(s: CpuState, number: int, error_code: int | None, kind: int, selector: int, offset: int,
                sp: int, pushes: list[int], width: int, write) -> CpuState:
    """What 32-bit and long-mode delivery share once the gate is read: push ``pushes``
    (and the error code, for the vectors that have one) ``width`` bytes each, clear TF and
    AC (and IF for an interrupt gate), continue at selector:offset."""
    mask = (1 << 8 * width) - 1
    if number in ERROR_CODE_VECTORS and error_code is not None:
        pushes.append(error_code)
    for value in pushes:
        sp = (sp - width) & mask
        write(sp, (value & mask).to_bytes(width, "little"))
    rflags = s.rflags & ~(RFLAGS_TF | RFLAGS_AC)
    if kind == GATE_INTERRUPT_32:
        rflags &= ~RFLAGS_IF
    return CpuState(s.cr0, s.efer, rflags, selector, offset, sp, s.ss, s.idt_base, s.idt_limit)
