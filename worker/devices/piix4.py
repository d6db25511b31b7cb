"""The Intel 82371AB PIIX4's PCI functions at 00:07: the PCI-to-ISA bridge (function 0,
8086:7110) and the IDE controller (function 1, 8086:7111), as a Hyper-V generation-1 VM
has them.  The ISA devices behind the bridge (PIC, PIT, RTC, keyboard, the IDE channels'
ports) are the chipset's own devices; this is their PCI face.

Policies:

* Function 0 is multi-function (header type 80h), so firmware scans 07.1 too.  Its PIRQ
  route control registers (PIRQRC[A:D], 60h-63h, reset 80h: routing disabled) keep what is
  written; no function of ours raises a PCI interrupt, so nothing follows from them.
* Function 1 is an IDE controller in compatibility mode only (programming interface 80h):
  its channels are the fixed ISA ports 0x1F0/0x3F6 (IRQ 14) and 0x170/0x376 (IRQ 15), so
  SeaBIOS and Linux probe the chipset's ATA disk there.  The IDE timing registers
  (IDETIM, 40h-43h; bit 15 enables a channel's decode) keep what is written, and the
  channels decode whatever they say.  Bus-master IDE is not built: BMIBA (BAR4) reads 0, so
  firmware finds no bus-master interface and uses PIO.
* The power-management function (07.3, 8086:7113) is not built: SeaBIOS would program its
  ACPI PM timer (port 0x608) and time by it, and there is no PM timer here.
"""

from __future__ import annotations

from worker.devices.pci_function import PciFunction

VENDOR_INTEL = 0x8086
DEVICE_PIIX4_ISA = 0x7110
DEVICE_PIIX4_IDE = 0x7111
CLASS_ISA_BRIDGE = 0x060100
CLASS_IDE_COMPAT_BUS_MASTER = 0x010180  # IDE, programming interface 80h
REVISION = 0x01
PIRQRC = 0x60  # PIRQRC[A:D] at 60h-63h
PIRQ_ROUTING_DISABLED = 0x80
IDETIM = 0x40  # primary 40h-41h, secondary 42h-43h


def piix4_isa_bridge() -> PciFunction:
    return PciFunction("piix4-isa", VENDOR_INTEL, DEVICE_PIIX4_ISA, CLASS_ISA_BRIDGE, revision=REVISION,
                       multifunction=True,
                       registers={PIRQRC + i: PIRQ_ROUTING_DISABLED for i in range(4)},
                       writable={PIRQRC + i: 0x8F for i in range(4)})


def piix4_ide() -> PciFunction:
    return PciFunction("piix4-ide", VENDOR_INTEL, DEVICE_PIIX4_IDE, CLASS_IDE_COMPAT_BUS_MASTER,
                       revision=REVISION, writable={IDETIM + i: 0xFF for i in range(4)})
