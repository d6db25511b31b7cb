"""The virtual-MMU and IPI hypercalls: HvCallSwitchVirtualAddressSpace, the flush family
(HvCallFlushVirtualAddressSpace/List and their Ex forms) and HvCallSendSyntheticClusterIpi(Ex).

They are the calls whose Ex forms name processors by HV_VP_SET (:mod:`hypervisor.vp_set`),
so they live together, as a mixin of :class:`hypervisor.hypercalls.Hypercalls`: its SPECS
table names them as ``Hypercalls`` methods, and they read its ``tlb``, ``wake`` and
``_rep_list``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proto.codes import HvStatus as S
from proto.hvcall import (
    HV_FLUSH_ALL_PROCESSORS,
    HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES,
    HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY,
    HV_FLUSH_USE_EXTENDED_RANGE_FORMAT,
    HV_GVA,
    HV_INPUT_FLUSH_VIRTUAL_ADDRESS_LIST,
    HV_INPUT_FLUSH_VIRTUAL_ADDRESS_LIST_EX,
    HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX,
    HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI_EX,
)

from hypervisor.vp_set import mask_to_set, parse_vp_set, vps_of

if TYPE_CHECKING:
    from hypervisor.hypercalls import Result

_FLUSH_FLAGS = (HV_FLUSH_ALL_PROCESSORS | HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES | HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY
                | HV_FLUSH_USE_EXTENDED_RANGE_FORMAT)


class FlushAndIpiCalls:
    """The handlers; :class:`hypervisor.hypercalls.Hypercalls` inherits them."""

    # -- address spaces and TLB flushes (TLFS "virtual MMU" calls) ------------------------

    def switch_virtual_address_space(self, caller, hc, args, data) -> Result:
        """The new CR3 (fast: in RDX).  The TLB is tagged by address space: no flush."""
        if caller.vp is not None:
            caller.vp.cr3 = args[0]
        return S.HV_STATUS_SUCCESS, b""

    @staticmethod
    def _flush_space(args):
        """The address space a flush header names (None: all of them), or None and the
        status when its flags are not the TLFS ones."""
        space, flags, _mask = args
        if flags & ~_FLUSH_FLAGS:
            return S.HV_STATUS_INVALID_PARAMETER, None
        # The processor mask names VPs, but a VP may have run on any LP, so the caller's
        # entries are flushed on every LP whatever the mask says.
        return S.HV_STATUS_SUCCESS, None if flags & HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES else space

    def flush_virtual_address_space(self, caller, hc, args, data) -> Result:
        """Only the caller's entries: of one address space, or of all of them.

        A partition the flush calls are not recommended to (CPUID 0x40000004 EAX bits 1–2)
        may still make them: a recommendation is advice and the calls need no privilege
        (TLFS "Feature and Interface Discovery" › "Implementation Recommendations";
        KVM with enforced CPUID refuses them instead).  The same holds for every flush and
        IPI call below."""
        status, space = self._flush_space(args)
        if status != S.HV_STATUS_SUCCESS:
            return status, b""
        return self._flush_whole_space(caller, space)

    def flush_virtual_address_list(self, caller, hc, args, data) -> Result:
        """Rep elements: GVAs whose bits 11:0 count additional pages to flush."""
        status, space = self._flush_space(args)
        if status != S.HV_STATUS_SUCCESS:
            return status, b""
        return self._flush_gvas(caller, hc, data, HV_INPUT_FLUSH_VIRTUAL_ADDRESS_LIST.size, space)

    def _flush_whole_space(self, caller, space: int) -> Result:
        """The caller's entries of one address space (or, ``space`` None, all of them): the
        tail of both address-space flushes, after their own checks."""
        if self.tlb is not None and caller.partition is not None:
            self.tlb.flush_partition(caller.partition.id, space, kind="address_space")
        return S.HV_STATUS_SUCCESS, b""

    def _flush_gvas(self, caller, hc, data, offset: int, space: int) -> Result:
        """The rep list of both address-list flushes, from ``offset``: GVAs whose bits 11:0
        count additional pages."""
        gvas = self._rep_list(hc, data, offset, HV_GVA)
        if gvas is None:
            return S.HV_STATUS_INVALID_HYPERCALL_INPUT, b""
        if self.tlb is not None and caller.partition is not None:
            ranges = [(gva >> 12, (gva & 0xFFF) + 1) for gva in gvas]
            self.tlb.flush_partition(caller.partition.id, space, ranges, kind="address_list")
        return S.HV_STATUS_SUCCESS, b""

    # -- the Ex forms: HV_VP_SET processor sets, for partitions of more than 64 VPs --------

    def flush_virtual_address_space_ex(self, caller, hc, args, data) -> Result:
        """As HvCallFlushVirtualAddressSpace, with an HV_VP_SET for the processor mask."""
        space, flags, fmt, banks = args
        status, space = self._flush_space((space, flags, 0))
        if status == S.HV_STATUS_SUCCESS:
            status, _ = parse_vp_set(fmt, banks, data, HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX.size,
                                     hc.var_header_qwords)
        if status != S.HV_STATUS_SUCCESS:
            return status, b""
        return self._flush_whole_space(caller, space)

    def flush_virtual_address_list_ex(self, caller, hc, args, data) -> Result:
        """As HvCallFlushVirtualAddressList, with an HV_VP_SET; the GVAs follow its banks."""
        space, flags, fmt, banks = args
        header = HV_INPUT_FLUSH_VIRTUAL_ADDRESS_LIST_EX.size
        status, space = self._flush_space((space, flags, 0))
        if status == S.HV_STATUS_SUCCESS:
            status, _ = parse_vp_set(fmt, banks, data, header, hc.var_header_qwords)
        if status != S.HV_STATUS_SUCCESS:
            return status, b""
        return self._flush_gvas(caller, hc, data, header + 8 * hc.var_header_qwords, space)

    def send_synthetic_cluster_ipi(self, caller, hc, args, data) -> Result:
        """A fixed interrupt to the VPs of a 64-bit mask (TLFS "HvCallSendSyntheticClusterIpi")."""
        vector, vtl, mask = args
        return self._send_ipi(caller, vector, vtl, mask_to_set(mask))

    def send_synthetic_cluster_ipi_ex(self, caller, hc, args, data) -> Result:
        """A fixed interrupt to the VPs of an HV_VP_SET (TLFS "HvCallSendSyntheticClusterIpiEx")."""
        vector, vtl, fmt, banks = args
        status, named = parse_vp_set(fmt, banks, data, HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI_EX.size,
                                     hc.var_header_qwords)
        if status != S.HV_STATUS_SUCCESS:
            return status, b""
        return self._send_ipi(caller, vector, vtl, named)

    def _send_ipi(self, caller, vector: int, vtl: int, named) -> Result:
        # TLFS: vectors below 0x10 are invalid; only VTL 0 exists here.  The root has no
        # VPs of its own to interrupt.
        if not 0x10 <= vector <= 0xFF or vtl or caller.partition is None:
            return S.HV_STATUS_INVALID_PARAMETER, b""
        for vp in vps_of(caller.partition, named):
            vp.apic.accept(vector)  # waits in the IRR, as an ICR-sent IPI does
            if self.wake is not None:
                self.wake(vp)  # ends its HLT (Dispatcher.wake: only a halted VP)
        return S.HV_STATUS_SUCCESS, b""
