"""HV_VP_SET, the sparse set of VP indices the Ex hypercalls name (TLFS "HV_VP_SET").

Two formats: HV_GENERIC_SET_ALL (every VP of the partition; mask and banks are not read) and
HV_GENERIC_SET_SPARSE_4K — ValidBanksMask says which 64-VP banks follow, lowest first, each
a 64-bit mask of the VPs 64n..64n+63 it holds, so a set reaches VP index 4095.  The banks are
the call's variable header, so its size (in the hypercall input value) must be the number of
banks; a bank count that disagrees with the mask is INVALID_HYPERCALL_INPUT (as KVM checks
it: the TLFS gives no status for it), an unknown format INVALID_PARAMETER.  VP indices the
partition does not have are ignored, as KVM does and as the non-Ex calls' 64-bit masks
always allowed: a guest names its processors, not the hypervisor's.
"""

from __future__ import annotations

import struct

from proto.codes import HvStatus as S
from proto.hvcall import HV_GENERIC_SET_ALL, HV_GENERIC_SET_SPARSE_4K, HV_VP_SET_BANKS

ALL = None  # a parsed HV_GENERIC_SET_ALL
MAX_VP_SET_INDEX = HV_VP_SET_BANKS * 64 - 1


def parse_vp_set(fmt: int, valid_banks: int, data: bytes, offset: int, banks: int) -> tuple[int, frozenset | None]:
    """(status, the VP indices named — or ALL) of an HV_VP_SET whose header is ``fmt`` and
    ``valid_banks`` and whose ``banks`` bank masks (the variable header) start at
    ``offset`` of ``data``."""
    if fmt == HV_GENERIC_SET_ALL:
        return S.HV_STATUS_SUCCESS, ALL  # its mask and banks say nothing (a guest sends none)
    if fmt != HV_GENERIC_SET_SPARSE_4K:
        return S.HV_STATUS_INVALID_PARAMETER, frozenset()
    if banks != bin(valid_banks).count("1") or len(data) < offset + 8 * banks:
        return S.HV_STATUS_INVALID_HYPERCALL_INPUT, frozenset()
    masks = struct.unpack_from(f"<{banks}Q", data, offset)
    indices, bank_masks = [], iter(masks)
    for bank in range(HV_VP_SET_BANKS):
        if valid_banks >> bank & 1:
            mask = next(bank_masks)
            indices.extend(bank * 64 + bit for bit in range(64) if mask >> bit & 1)
    return S.HV_STATUS_SUCCESS, frozenset(indices)


def vps_of(part, named: frozenset | None) -> list:
    """The partition's VPs a parsed set names (ALL: every one)."""
    if named is ALL:
        return list(part.vps)
    return [vp for vp in part.vps if vp.index in named]


def mask_to_set(mask: int) -> frozenset:
    """A non-Ex call's 64-bit processor mask as a set of VP indices."""
    return frozenset(bit for bit in range(64) if mask >> bit & 1)
