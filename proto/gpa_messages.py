"""The VSP's view of guest pages kept honest (issue 10): message ids 90–93.

A GPADL's pages are mapped by the root's VSP process while the GPADL lives (``gpa_map_request``,
proto/synic_messages.py).  When the root later unmaps guest pages of the partition
(HvCallUnmapGpaPages), the hypervisor tells the VSP which of the pages it was granted went,
and the VSP revokes every GPADL over one of them (root/vsp/server.py): it never reaches
them again, even after the root maps the addresses once more.
"""

# (no ``from __future__ import annotations``: the fields' types are the checks, proto.messages)
from proto.fields import U32, U64, ranges
from proto.messages import Message, message

# (not proto.synic_messages' page_ranges: importing it from here would make the two modules
# import each other, whichever of them is imported first; the same limits)
MAX_UNMAPPED_RANGES = 512
page_ranges = ranges("guest page-number space", U64, U32, 1 << 40, MAX_UNMAPPED_RANGES)


@message(90, "gpa_unmapped")
class GpaUnmapped(Message):
    """hv → vsp: guest pages of ``partition`` the VSP was granted are no longer mapped."""

    partition: U64
    pages: page_ranges


__all__ = ["GpaUnmapped"]
