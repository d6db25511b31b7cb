"""The real-CPU backends in-process: real machine code, a fake ExitPort (fake_port.py), on
unicorn and — where /dev/kvm opens — on KVM.  Each program's assembly is beside its bytes."""

from __future__ import annotations

import os

import pytest

from partitions.cpu import unavailable
from partitions.cpu.boot import Boot
from partitions.cpu.exitport import GuestCrash
from partitions.cpu.run import backend_class
from partitions.vp import VpStopped
from tests.unit.partitions.fake_port import FakePort, guest_memory

CODE = 0x1000
@pytest.fixture(params=["unicorn", "kvm"])
def cpu(request):
    if unavailable(request.param):
        pytest.skip(unavailable(request.param))
    return request.param


def make(cpu: str, mem, boot: Boot, **port_args):
    if cpu == "kvm":
        from partitions.cpu.kvm_cpu import before_confinement
        before_confinement(boot)
    made = {}
    backend = backend_class(cpu)(lambda regs: made.setdefault("port", FakePort(regs, mem, **port_args)), mem, boot)
    return backend, made["port"]


def run_until_stopped(backend, *boots) -> None:
    """Run ``backend`` until its port stops it, then close it and any /dev/kvm descriptor
    the ``boots`` opened (KVM's before_confinement opens one per Boot it is given)."""
    try:
        with pytest.raises(VpStopped):
            backend.run()
    finally:
        backend.close()
        for boot in boots:
            if boot.kvm_fd is not None:
                os.close(boot.kvm_fd)
                boot.kvm_fd = None


def run(tmp_path, code: bytes, *, cpu="unicorn", real_mode=False, load=(), msrs=None, **port_args):
    mem = guest_memory(tmp_path)
    boot = Boot(real_mode, 0, CODE, load=[(CODE, code), *load], msr_code=[(CODE, CODE + len(code))])
    if real_mode and cpu == "kvm":
        boot.cs, boot.ip = 0, CODE  # KVM starts at its reset state's CS: 0000:1000 here
    backend, port = make(cpu, mem, boot, **port_args)
    port.msrs.update(msrs or {})
    run_until_stopped(backend, boot)
    return port, mem


def test_rep_insw_takes_each_word_once_when_quantum_ends_fall_inside_it(tmp_path, cpu):
    # mov $0x2000,%edi; mov $8,%ecx; mov $0x1f0,%dx; cld; rep insw; cli; hlt
    code = bytes.fromhex("bf00200000b90800000066baf001fc66f36dfaf4")
    words = [0x1111 * (i + 1) for i in range(8)]
    # A 100 µs quantum and a 300 µs device read: on unicorn the quantum is over at every
    # iteration (KVM exits once for the whole string: one io_string intercept of ours).
    port, mem = run(tmp_path, code, cpu=cpu, inputs={0x1F0: words}, quantum_ns=100_000, input_delay_s=0.0003)
    if cpu == "kvm":
        assert port.of("ins") == [("ins", 0x1F0, 2, 8)] and not port.of("in")
    else:
        assert len(port.of("quantum")) >= 4
        assert port.of("in") == [("in", 0x1F0, 2)] * 8  # no read of the device twice
    assert [mem.read_int(0x2000 + 2 * i, 2) for i in range(8)] == words


def test_cpuid_and_synthetic_msrs_exit_other_msrs_run_natively(tmp_path, cpu):
    # mov $0x40000000,%eax; cpuid; mov %eax,0x3000; mov %ebx,0x3004
    # mov $0x40000002,%ecx; rdmsr; mov %eax,0x3008
    # mov $0x40000073,%ecx; mov $0x5001,%eax; xor %edx,%edx; wrmsr
    # mov $0x1b,%ecx; rdmsr (IA32_APIC_BASE: the CPU's own); cli; hlt
    code = bytes.fromhex("b8000000400fa2a300300000891d04300000b9020000400f32a308300000"
                         "b973000040b80150000031d20f30b91b0000000f32faf4")
    port, mem = run(tmp_path, code, cpu=cpu, msrs={0x40000002: 7})
    # unicorn asks for CPUID here; KVM asked for the Hyper-V leaves when the VP started.
    assert ("cpuid", 0x40000000, 0) in port.of("cpuid")
    assert (mem.read_int(0x3000, 4), mem.read_int(0x3004, 4)) == (0x40000001, 0x11)
    assert port.of("rdmsr") == [("rdmsr", 0x40000002)] and mem.read_int(0x3008, 4) == 7
    assert port.of("wrmsr") == [("wrmsr", 0x40000073, 0x5001)]
    assert port.of("halt") == [("halt", False)]


def test_the_hypercall_page_exit_reads_the_32_bit_registers_and_returns_edx_eax(tmp_path, cpu):
    # mov $0x10008,%eax; xor %edx,%edx; mov $5,%ecx; xor %ebx,%ebx; mov $0x9000,%esi
    # xor %edi,%edi; out %eax,$0xe0; mov %eax,0x3000; mov %edx,0x3004; cli; hlt
    code = bytes.fromhex("b80800010031d2b90500000031dbbe0090000031ffe7e0a300300000891504300000faf4")
    port, mem = run(tmp_path, code, cpu=cpu)
    assert port.hypercalls == [(0x10008, 5, 0x9000)]
    assert port.of("out") == []  # the hypercall port is not a device port
    assert (mem.read_int(0x3000, 4), mem.read_int(0x3004, 4)) == (2, 0)


def test_an_address_the_slat_does_not_map_is_an_mmio_exit(tmp_path, cpu):
    # mov 0xfee00030,%eax; mov %eax,0x3000; movw $0x0741,0xb8000; cli; hlt
    code = bytes.fromhex("a13000e0fea30030000066c70500800b004107faf4")
    port, mem = run(tmp_path, code, cpu=cpu)
    assert port.of("mmio_read") == [("mmio_read", 0xFEE00030, 4)]
    assert mem.read_int(0x3000, 4) == 0x12345678
    assert port.of("mmio_write") == [("mmio_write", 0xB8000, 2, 0x0741)]


def test_int_n_in_real_mode_goes_through_the_ivt_and_iret_comes_back(tmp_path, cpu):
    # at 0000:1000: int $0x13; mov %bx,%ax; out %ax,$0x80; cli; hlt
    # at 0000:8000 (IVT entry 0x13): mov $0x55,%bx; iret
    code = bytes.fromhex("cd1389d8e780faf4")
    ivt = (0x13 * 4, (0x8000).to_bytes(2, "little") + (0).to_bytes(2, "little"))
    port, _ = run(tmp_path, code, cpu=cpu, real_mode=True, load=[ivt, (0x8000, bytes.fromhex("bb5500cf"))])
    assert port.of("out") == [("out", 0x80, 2, 0x55)]
    if cpu == "unicorn":  # unicorn vectors INT n itself; KVM's CPU does
        assert port.counters["software_interrupts"] == 1


def test_an_unmapgpa_reaches_the_backend_at_the_next_halt(tmp_path, cpu):
    # 1: mov 0x5000,%eax; out %eax,$0x80; hlt; jmp 1b
    code = bytes.fromhex("a100500000e780f4ebf6")
    halts = []

    def unmap_page_5_then_stop(port):
        halts.append(1)
        if len(halts) == 1:  # the hypervisor's HvCallUnmapGpaPages, as the SLAT shows it
            with open(tmp_path / "slat", "r+b") as f:
                f.seek(5 * 4)
                f.write(b"\xff\xff\xff\xff")
            return True
        return False
    mem = guest_memory(tmp_path)
    mem.write_int(0x5000, 4, 0x1234)
    boot = Boot(False, 0, CODE, load=[(CODE, code)])
    backend, port = make(cpu, mem, boot, on_halt=unmap_page_5_then_stop)
    run_until_stopped(backend, boot)
    assert port.of("out") == [("out", 0x80, 4, 0x1234), ("out", 0x80, 4, 0x12345678)]
    assert port.of("mmio_read") == [("mmio_read", 0x5000, 4)]
    assert port.counters["slat_remaps"] == 1


def test_vps_share_the_firmware_regions_and_an_ap_starts_at_its_sipi_vector(tmp_path, cpu):
    """SeaBIOS's APs count themselves in its F-segment: what one VP writes to a firmware
    region the next reads.  VP "0" at 0000:1000 stores 5Ah at F000:0010; the AP, started
    as a SIPI with vector 10h starts it (1000:0000), reads it back and OUTs it."""
    from partitions.cpu.boot import Region, at_sipi
    mem = guest_memory(tmp_path)
    bsp_code = bytes.fromhex("b800f08ed8c60610005afaf4")  # mov ax,f000; mov ds,ax; mov byte [10],5a; cli; hlt
    ap_code = bytes.fromhex("b800f08ed8a01000e680faf4")  # mov ax,f000; mov ds,ax; mov al,[10]; out 80,al; cli; hlt
    boot = Boot(True, 0, CODE, load=[(CODE, bsp_code), (0x10000, ap_code)],
                regions=[Region(0xF0000, bytes(0x10000), writable=True)])
    for start in (boot, at_sipi(boot, 0x10)):
        backend, port = make(cpu, mem, start)
        run_until_stopped(backend, start)  # (the AP's Boot is a copy: it opened its own /dev/kvm)
    assert port.of("out") == [("out", 0x80, 1, 0x5A)]
    boot.regions[0].reload()  # what VP 0 does when it starts at the reset vector again
    assert boot.regions[0].buffer()[0x10] == 0


def test_cmos_says_how_many_processors_a_firmware_partition_has():
    from partitions.cpu.boot import CMOS_NVRAM_FIRST, CMOS_SMP_COUNT, cmos_nvram
    assert cmos_nvram(4)[CMOS_SMP_COUNT - CMOS_NVRAM_FIRST] == 0
    assert cmos_nvram(4, vps=4)[CMOS_SMP_COUNT - CMOS_NVRAM_FIRST] == 3


def test_unicorn_saves_its_registers_at_a_halt_and_a_new_cpu_goes_on_from_them(tmp_path):
    """Save and restore (issue 13): the register file taken at an exit between two
    instructions (the HLT) starts a new CPU there, with RAM as it was; an exit inside an
    instruction (the OUT's hook) is no place to take one."""
    import msgpack

    if unavailable("unicorn"):
        pytest.skip(unavailable("unicorn"))
    # mov $0x1234,%eax; mov $0x5678,%ebx; out %al,$0x80; cli; hlt;
    # mov %eax,0x3000; mov %ebx,0x3004; cli; hlt
    code = bytes.fromhex("b834120000bb78560000e680faf4a300300000891d04300000faf4")
    mem = guest_memory(tmp_path)
    boot = Boot(False, 0, CODE, load=[(CODE, code)])
    taken = {}
    backend, port = make("unicorn", mem, boot, on_halt=lambda p: taken.setdefault("state", backend.cpu_state()) and False)
    out_state = []
    port.port_out = lambda *a: out_state.append(backend.cpu_state())  # inside the OUT instruction
    run_until_stopped(backend)
    assert out_state == [(False, b"")]
    boundary, state = taken["state"]
    assert boundary and mem.read_int(0x3000, 4) == 0
    saved = msgpack.unpackb(state)
    assert saved["regs"]["EAX"] == 0x1234 and saved["regs"]["EIP"] == CODE + 14  # past the HLT
    made = {}
    again = backend_class("unicorn")(lambda regs: made.setdefault("port", FakePort(regs, mem)), mem, boot, saved=saved)
    run_until_stopped(again)
    assert (mem.read_int(0x3000, 4), mem.read_int(0x3004, 4)) == (0x1234, 0x5678)
    bad = {**saved, "regs": {**saved["regs"], "EAX": -1}}
    broken = backend_class("unicorn")(lambda regs: FakePort(regs, mem), mem, boot, saved=bad)
    with pytest.raises(GuestCrash, match="EAX"):
        broken.run()
    broken.close()


def test_two_unicorn_vps_of_a_partition_never_lose_a_locked_update(tmp_path):
    """Unicorn's ``lock`` is not atomic across two instances sharing memory (SeaBIOS's
    SMPLock was lost that way); a partition's VPs run guest code one at a time, so two VPs
    each doing N × ``lock incl`` on one word of a shared firmware region count 2N.  The
    loop makes no exit: the quantum, checked in firmware too with two VPs, hands over."""
    import threading

    from partitions.cpu.boot import Region
    if unavailable("unicorn"):
        pytest.skip(unavailable("unicorn"))
    n, counter = 100_000, 0xF8000
    # mov ecx, n; 1: lock incl [counter]; loop 1b; cli; hlt
    code = b"\xb9" + n.to_bytes(4, "little") + b"\xf0\xff\x05" + counter.to_bytes(4, "little") + b"\xe2\xf7\xfa\xf4"
    mem = guest_memory(tmp_path)
    boot = Boot(False, 0, 0xF0000, regions=[Region(0xF0000, code.ljust(0x10000, b"\0"), writable=True)], vps=2)
    ports, errors = [], []

    def vp():
        backend, port = make("unicorn", mem, boot, quantum_ns=1_000_000)
        ports.append(port)
        try:
            backend.run()
        except VpStopped:
            pass
        except BaseException as e:  # noqa: BLE001 — reported below
            errors.append(e)
        finally:
            backend.close()

    threads = [threading.Thread(target=vp) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads), errors
    assert int.from_bytes(boot.regions[0].buffer()[0x8000:0x8004], "little") == 2 * n
    assert all(p.of("quantum") for p in ports)  # each gave the other its turn at quantum ends




def test_a_save_asked_inside_rep_insw_takes_the_boundary_between_two_words(tmp_path):
    """A string IN is interruptible between elements, as on hardware: a boundary asked
    while one word's exit waits is taken before the next word (ECX and EDI counting the
    words done), and every word is read once (an emu_stop in its hook would take the
    word again)."""
    import msgpack

    if unavailable("unicorn"):
        pytest.skip(unavailable("unicorn"))
    code = bytes.fromhex("bf00200000b90800000066baf001fc66f36dfaf4")  # the test above's rep insw
    words = [0x1111 * (i + 1) for i in range(8)]
    mem = guest_memory(tmp_path)
    boot = Boot(False, 0, CODE, load=[(CODE, code)], msr_code=[(CODE, CODE + len(code))])
    backend, port = make("unicorn", mem, boot, inputs={0x1F0: words}, quantum_ns=60_000_000_000)
    port_in, states = port.port_in, []

    def port_in_and_ask(*args):
        value = port_in(*args)
        if len(port.exits) == 3:
            port.boundary_wanted = True  # asked inside the third word's IN
        return value

    def quantum_exit():
        states.append(backend.cpu_state())
        FakePort.quantum_exit(port)

    port.port_in, port.quantum_exit = port_in_and_ask, quantum_exit
    run_until_stopped(backend)
    assert [e[0] for e in port.exits] == ["in"] * 3 + ["quantum"] + ["in"] * 5 + ["halt"]
    regs = msgpack.unpackb(states[0][1])["regs"]
    assert states[0][0] and regs["ECX"] == 5 and regs["EDI"] == 0x2006 and regs["EIP"] == CODE + 15  # at rep insw
    assert [mem.read_int(0x2000 + 2 * i, 2) for i in range(8)] == words

# 32-bit: xor ecx,ecx; 1: inc ecx; out 0x80,al; in al,0x80; mov [0xb8000],ecx;
# mov eax,[0xfee00030]; jmp 1b — four exits an iteration, none of them a boundary.
EXITS_LOOP = bytes.fromhex("31c941e680e480890d00800b00a13000e0feebee")


# Where EIP is after each of the loop's exits (KVM stops right after the instruction).
EXITS_LOOP_NEXT = {"out": 5, "in": 7, "mmio_write": 13, "mmio_read": 18}


@pytest.mark.parametrize("asked_after", [40, 41, 42, 43])
def test_a_save_asked_inside_an_instruction_gets_the_next_boundary_as_an_exit(tmp_path, cpu, asked_after):
    """A save that finds the VP inside an instruction (an exit of a guest doing I/O after
    I/O) asks for a boundary: the VP exits at the next one (a quantum exit) instead of
    running on to its quantum's end — unicorn at the next basic block (here the loop's
    head), KVM right after the instruction (its next KVM_RUN, with immediate_exit,
    completes it).  Every instruction ran once: the exits keep the loop's order and the
    MMIO writes count 1, 2, 3, …"""
    import msgpack

    mem = guest_memory(tmp_path)
    boot = Boot(False, 0, CODE, load=[(CODE, EXITS_LOOP)], msr_code=[(CODE, CODE + len(EXITS_LOOP))])
    backend, port = make(cpu, mem, boot, quantum_ns=60_000_000_000)
    kinds = ["out", "in", "mmio_write", "mmio_read"]
    states = []

    def loop_exits() -> list[str]:  # (KVM's backend asks the CPUID leaves first)
        return [e[0] for e in port.exits if e[0] != "cpuid"]

    def asking(exit_):
        def exit_and_ask(*args):
            value = exit_(*args)
            made = len(loop_exits())
            if made in (asked_after, 80):
                states.append(backend.cpu_state())
                port.boundary_wanted = True  # what ExitPort.cpu_state does with that answer
                if made == 80:
                    port.stop.set()  # the next boundary ends the run
            return value
        return exit_and_ask

    def quantum_exit():
        states.append(backend.cpu_state())
        FakePort.quantum_exit(port)  # raises VpStopped the second time

    port.port_out, port.port_in = asking(port.port_out), asking(port.port_in)
    port.mmio_read, port.mmio_write = asking(port.mmio_read), asking(port.mmio_write)
    port.quantum_exit = quantum_exit
    run_until_stopped(backend, boot)
    got = loop_exits()
    # The boundary: unicorn's at the loop's head after the exit asked in, KVM's right after it.
    at = asked_after if cpu == "kvm" else -(-asked_after // 4) * 4
    assert got[:at] == [kinds[i % 4] for i in range(at)] and got[at] == "quantum"
    accesses = [k for k in got if k != "quantum"]
    assert accesses == [kinds[i % 4] for i in range(len(accesses))]
    assert [e[3] for e in port.of("mmio_write")] == list(range(1, len(port.of("mmio_write")) + 1))
    inside, (boundary, state) = states[0], states[1]
    assert inside == (False, b"") and boundary
    saved = msgpack.unpackb(state)
    if cpu == "kvm":  # kvm_regs: RAX, RBX, RCX, … R15, then RIP (KVM's ABI)
        raw = bytes.fromhex(saved["kvm_regs"])
        ecx, eip = int.from_bytes(raw[16:24], "little"), int.from_bytes(raw[128:136], "little")
        assert eip == CODE + EXITS_LOOP_NEXT[kinds[(asked_after - 1) % 4]] and ecx == -(-asked_after // 4)
    else:
        assert saved["regs"]["EIP"] == CODE + 2 and saved["regs"]["ECX"] == at // 4


def test_a_save_that_finds_no_boundary_makes_the_next_ones_exits_for_a_moment(monkeypatch):
    """ExitPort.cpu_state: the backend's answer "inside an instruction" starts the wish
    (every boundary an exit: ``exit_wanted``) for BOUNDARY_WISH_NS; an answer at a boundary,
    or the time running out, ends it — an abandoned save leaves no exits behind."""
    import threading

    from partitions.cpu import exitport
    from partitions.vp import NEVER
    from tests.unit.partitions.test_vp_preemption_point import Dealer, Ram

    now = [10**12]
    monkeypatch.setattr(exitport, "perf_counter_ns", lambda: now[0])
    port = exitport.ExitPort(Dealer(), 0, Ram(), threading.Event(), regs=lambda: (2, 0))
    port._quantum_end = NEVER
    answers = [(False, b""), (True, b"regs"), (False, b"")]
    port.cpu_state_of = lambda: answers.pop(0)
    assert not port.boundary_wanted and not port.exit_wanted
    assert port.cpu_state() == (False, b"")
    assert port.boundary_wanted and port.exit_wanted
    assert port.cpu_state() == (True, b"regs")  # the save has its boundary: the wish ends
    assert not port.boundary_wanted and not port.exit_wanted
    port.cpu_state()
    now[0] += exitport.BOUNDARY_WISH_NS - 1
    assert port.exit_wanted
    now[0] += 1
    assert not port.boundary_wanted and not port.exit_wanted
