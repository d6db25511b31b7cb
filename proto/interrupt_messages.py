"""Messages of prompt interrupt delivery (ids 60 and 88; issue 12), imported at the end of
``proto/messages.py`` so that ``messages.InterruptNotify`` is one of its messages."""

from proto.fields import U16, stamps
from proto.messages import Message, message


@message(60, "interrupt_notify")
class InterruptNotify(Message):
    """Hypervisor → VP: a posted interrupt for a VP that is executing guest code — what an
    Intel posted-interrupt notification does for a running vCPU (the vector moves into the
    virtual IRR without a VM exit).  The VP reads it at its next preemption point
    (``partitions.vp.Vp.preemption_point``), or, if it exits first, while it waits for the
    resume, and takes the vector as if a resume had carried it (``VpResume.interrupt``)."""

    interrupt: U16  # a vector (bits 7:0) and INTERRUPT_NO_EOI, as in VpResume
    irq_stamps: stamps  # that interrupt's path: device raise … hv inject


@message(88, "posted_descriptor_ready")
class PostedDescriptorReady(Message):
    """VP → hypervisor, on its own connection: it reads its posted-interrupt descriptor
    (:mod:`proto.posted`) at its preemption points and whenever it resumes, so interrupts
    posted to it from now on may go there instead of in ``interrupt_notify`` messages.  Sent
    once, before the VP runs guest code; a VP that never sends it keeps the messages."""

    layout: U16  # proto.posted.LAYOUT, the layout the VP reads


__all__ = ["InterruptNotify", "PostedDescriptorReady"]
