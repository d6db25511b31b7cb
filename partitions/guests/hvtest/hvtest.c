/* hvtest: a freestanding 32-bit test kernel for hvstack's real-CPU backends.
 *
 * It probes the generation-1 chipset and the Hyper-V enlightenments the way Linux's drivers
 * and kvm-unit-tests do, and prints one TAP line per check on COM1 ("ok N - what" or
 * "not ok N - what: detail"), then "hvtest: P/N passed" and halts with interrupts off (the
 * backend reports that as the guest being done).  Checks of an enlightenment the partition
 * does not offer (CPUID 0x40000003) are skipped ("ok N - what # SKIP not offered").
 */
#include <stdint.h>

#define COM1 0x3f8
#define PIC1 0x20
#define PIC2 0xa0
#define PIT_CH0 0x40
#define PIT_CMD 0x43
#define CMOS_INDEX 0x70
#define CMOS_DATA 0x71
#define ATA 0x1f0
#define ATA_CTL 0x3f6
#define APIC_BASE 0xfee00000u
#define HYPERCALL_PAGE 0x9f000u   /* last page below 640 KiB, as the Python guest uses */
#define ASSIST_PAGE 0x9e000u
#define INPUT_PAGE 0x9d000u
#define TIMER_VECTOR 0x20
#define APIC_VECTOR 0xef
#define SPURIOUS_VECTOR 0xff

#define HV_X64_MSR_GUEST_OS_ID 0x40000000
#define HV_X64_MSR_HYPERCALL 0x40000001
#define HV_X64_MSR_VP_INDEX 0x40000002
#define HV_X64_MSR_TIME_REF_COUNT 0x40000020
#define HV_X64_MSR_EOI 0x40000070
#define HV_X64_MSR_TPR 0x40000072
#define HV_X64_MSR_VP_ASSIST_PAGE 0x40000073

#define PRIV_REFERENCE_COUNTER (1u << 1)
#define PRIV_APIC_MSRS (1u << 4)
#define PRIV_HYPERCALL_MSRS (1u << 5)
#define PRIV_VP_INDEX (1u << 6)

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void insw(uint16_t port, void *buf, uint32_t n)
{
    __asm__ volatile("cld; rep insw" : "+D"(buf), "+c"(n) : "d"(port) : "memory");
}
static inline void outsw(uint16_t port, const void *buf, uint32_t n)
{
    __asm__ volatile("cld; rep outsw" : "+S"(buf), "+c"(n) : "d"(port) : "memory");
}
static inline void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}
static inline uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((uint64_t)hi << 32) | lo;
}
static inline void wrmsr(uint32_t msr, uint64_t v)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}
static inline uint32_t mmio_read(uintptr_t addr) { return *(volatile uint32_t *)addr; }
static inline void mmio_write(uintptr_t addr, uint32_t v) { *(volatile uint32_t *)addr = v; }

/* -- COM1 output (polled: the UART is checked before anything is printed) ------------------ */

/* THRE (LSR bit 5) says the transmitter is empty: with the FIFO on (after autoconfig) 16
 * bytes go in before the next look, as the 8250 driver's tx loop fills the FIFO. */
static int fifo_on, tx_room;

static void putc(char c)
{
    if (tx_room == 0) {
        for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++)
            ;
        tx_room = fifo_on ? 16 : 1;
    }
    tx_room--;
    outb(COM1, (uint8_t)c);
}

static void puts(const char *s)
{
    for (; *s; s++) {
        if (*s == '\n')
            putc('\r');
        putc(*s);
    }
}

static void putu(uint32_t v)
{
    char buf[11];
    int i = 10;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    puts(buf + i);
}

static void puthex(uint32_t v)
{
    static const char digits[] = "0123456789abcdef";
    char buf[11] = "0x";
    int n = 2;
    for (int shift = 28; shift >= 0; shift -= 4)
        if ((v >> shift) || shift == 0 || n > 2)
            buf[n++] = digits[(v >> shift) & 0xf];
    buf[n] = 0;
    puts(buf);
}

static uint32_t checks, passed;

static void result(int ok, const char *what, const char *why, uint32_t value)
{
    checks++;
    passed += ok != 0;
    puts(ok ? "ok " : "not ok ");
    putu(checks);
    puts(" - ");
    puts(what);
    if (!ok) {
        puts(": ");
        puts(why);
        puts(" ");
        puthex(value);
    }
    puts("\n");
}

#define CHECK(cond, what, value) result((cond), (what), #cond, (value))

static void skip(const char *what, const char *why)
{
    checks++;
    passed++;
    puts("ok ");
    putu(checks);
    puts(" - ");
    puts(what);
    puts(" # SKIP ");
    puts(why);
    puts("\n");
}

/* -- interrupts ----------------------------------------------------------------------------- */

#ifdef __x86_64__
struct gate { uint16_t lo, sel; uint8_t ist, type; uint16_t mid; uint32_t hi, reserved; } __attribute__((packed));
#else
struct gate { uint16_t lo, sel; uint8_t zero, type; uint16_t hi; } __attribute__((packed));
#endif
static struct gate idt[256];
static struct { uint16_t limit; uintptr_t base; } __attribute__((packed)) idt_desc;
extern char isr_stubs[];

void idt_init(void)
{
    for (int v = 0; v < 256; v++) {
        uintptr_t at = (uintptr_t)isr_stubs + 16 * v;
#ifdef __x86_64__
        idt[v] = (struct gate){ (uint16_t)at, 0x08, 0, 0x8e, (uint16_t)(at >> 16), (uint32_t)(at >> 32), 0 };
#else
        idt[v] = (struct gate){ (uint16_t)at, 0x08, 0, 0x8e, (uint16_t)(at >> 16) };
#endif
    }
    idt_desc.limit = sizeof(idt) - 1;
    idt_desc.base = (uintptr_t)idt;
    __asm__ volatile("lidt %0" : : "m"(idt_desc));
}

static volatile uint32_t ticks, apic_fires, other_vectors, last_other, exceptions;
static int eoi_by_msr;

void isr(uintptr_t vector, uintptr_t error)
{
    (void)error;
    if (vector == TIMER_VECTOR) {
        ticks++;
        outb(PIC1, 0x20);
    } else if (vector == APIC_VECTOR) {
        apic_fires++;
        if (eoi_by_msr)
            wrmsr(HV_X64_MSR_EOI, 0);
        else
            mmio_write(APIC_BASE + 0xb0, 0);
    } else if (vector < 32) {
        exceptions++;
        puts("exception ");
        puthex(vector);
        puts("\n");
        for (;;)
            __asm__ volatile("cli; hlt");
    } else {
        other_vectors++;
        last_other = vector;
        if (vector >= 0x20 && vector < 0x30) {
            if (vector >= 0x28)
                outb(PIC2, 0x20);
            outb(PIC1, 0x20);
        }
    }
}

/* Wait with HLT until *counter reaches target, at most `rounds` wake-ups. */
static void wait_for(volatile uint32_t *counter, uint32_t target, uint32_t rounds)
{
    while (*counter < target && rounds--)
        __asm__ volatile("sti; hlt; cli");
}

/* -- the checks ------------------------------------------------------------------------------- */

static void uart_autoconfig(void)
{
    /* drivers/tty/serial/8250/8250_port.c autoconfig(): IER, loopback, FIFO. */
    outb(COM1 + 7, 0xa5);
    uint8_t scr1 = inb(COM1 + 7);
    outb(COM1 + 7, 0x5a);
    uint8_t scr2 = inb(COM1 + 7);
    uint8_t save_ier = inb(COM1 + 1);
    outb(COM1 + 1, 0);
    uint8_t ier0 = inb(COM1 + 1) & 0x0f;
    outb(COM1 + 1, 0x0f);
    uint8_t ier1 = inb(COM1 + 1) & 0x0f;
    outb(COM1 + 1, save_ier);
    uint8_t save_mcr = inb(COM1 + 4);
    outb(COM1 + 4, 0x10 | 0x0a);              /* UART_MCR_LOOP | RTS | OUT2 */
    uint8_t status = inb(COM1 + 6) & 0xf0;    /* DCD|RI|DSR|CTS */
    outb(COM1 + 4, save_mcr);
    outb(COM1 + 2, 0x01);                     /* UART_FCR_ENABLE_FIFO */
    uint8_t iir = inb(COM1 + 2) >> 6;
    outb(COM1 + 3, 0x80);                     /* DLAB: 115200 baud, divisor 1 */
    outb(COM1 + 0, 0x01);
    outb(COM1 + 1, 0x00);
    uint8_t dll = inb(COM1 + 0);
    outb(COM1 + 3, 0x03);                     /* 8N1 */
    outb(COM1 + 2, 0xc7);                     /* FIFO on, cleared, 14-byte trigger */
    fifo_on = iir == 3;
    tx_room = 0;
    puts(sizeof(void *) == 8 ? "hvtest: real x86 test kernel (64-bit)\n" : "hvtest: real x86 test kernel (32-bit)\n");
    CHECK(scr1 == 0xa5 && scr2 == 0x5a, "16550A scratch register", scr1);
    CHECK(ier0 == 0 && ier1 == 0x0f, "16550A IER test", ((uint32_t)ier0 << 8) | ier1);
    CHECK(status == 0x90, "16550A loopback: MCR RTS|OUT2 -> MSR CTS|DCD", status);
    CHECK(iir == 3, "16550A FIFO (IIR bits 7:6 = 3: a 16550A)", iir);
    CHECK(dll == 0x01, "16550A divisor latch", dll);
}

static void pic_pit(void)
{
    outb(PIC1, 0x11); outb(PIC2, 0x11);       /* ICW1: edge, cascade, ICW4 */
    outb(PIC1 + 1, 0x20); outb(PIC2 + 1, 0x28);
    outb(PIC1 + 1, 0x04); outb(PIC2 + 1, 0x02);
    outb(PIC1 + 1, 0x01); outb(PIC2 + 1, 0x01);
    outb(PIC1 + 1, 0xfe); outb(PIC2 + 1, 0xff); /* IRQ0 only */
    uint8_t imr1 = inb(PIC1 + 1), imr2 = inb(PIC2 + 1);
    CHECK(imr1 == 0xfe && imr2 == 0xff, "8259A init and IMR read-back", ((uint32_t)imr1 << 8) | imr2);
    uint16_t divisor = 11932;                 /* 1193182 Hz / 100 */
    outb(PIT_CMD, 0x34);                      /* channel 0, lo/hi, mode 2 */
    outb(PIT_CH0, (uint8_t)divisor);
    outb(PIT_CH0, (uint8_t)(divisor >> 8));
    wait_for(&ticks, 5, 1000);
    CHECK(ticks >= 5, "8254 channel 0 at 100 Hz: 5 ticks on vector 0x20 (PIC EOI each)", ticks);
    outb(PIC1 + 1, 0xff);                     /* quiet again */
}

static int bcd_ok(uint8_t v, uint8_t max) { return (v & 0x0f) <= 9 && (v >> 4) <= 9 && ((v >> 4) * 10 + (v & 0x0f)) <= max; }

static uint8_t cmos(uint8_t reg) { outb(CMOS_INDEX, reg); return inb(CMOS_DATA); }

static void rtc(void)
{
    for (int i = 0; i < 10000 && (cmos(0x0a) & 0x80); i++)
        ;
    uint8_t b = cmos(0x0b);
    uint8_t sec = cmos(0x00), min = cmos(0x02), hour = cmos(0x04), day = cmos(0x07), mon = cmos(0x08), year = cmos(0x09);
    int bcd = !(b & 0x04);
    int ok = bcd ? bcd_ok(sec, 59) && bcd_ok(min, 59) && bcd_ok(hour & 0x7f, 23) && bcd_ok(day, 31) && bcd_ok(mon, 12) && bcd_ok(year, 99)
                 : sec <= 59 && min <= 59 && day >= 1 && day <= 31 && mon >= 1 && mon <= 12;
    CHECK(ok, "MC146818 RTC date and time are valid", ((uint32_t)b << 24) | ((uint32_t)mon << 8) | day);
    CHECK(cmos(0x0d) & 0x80, "MC146818 RTC register D: valid RAM and time", cmos(0x0d));
}

static int ata_wait(int drq)
{
    for (int i = 0; i < 1000000; i++) {
        uint8_t s = inb(ATA + 7);
        if (s & 0x01)
            return -1;                        /* ERR */
        if (!(s & 0x80) && (!drq || (s & 0x08)))
            return 0;
    }
    return -2;
}

static uint16_t sector[256], back[256];

static void ata_setup(uint8_t cmd, uint32_t lba)
{
    outb(ATA + 6, 0xe0 | ((lba >> 24) & 0x0f));
    outb(ATA + 2, 1);
    outb(ATA + 3, (uint8_t)lba);
    outb(ATA + 4, (uint8_t)(lba >> 8));
    outb(ATA + 5, (uint8_t)(lba >> 16));
    outb(ATA + 7, cmd);
}

static void ata(void)
{
    outb(ATA_CTL, 0x02);                      /* nIEN: polled */
    outb(ATA + 6, 0xa0);
    uint8_t status = inb(ATA + 7);
    if (status == 0xff || status == 0) {
        skip("ATA IDENTIFY DEVICE", "no disk on the primary channel");
        return;
    }
    outb(ATA + 7, 0xec);
    int w = ata_wait(1);
    if (w == 0)
        insw(ATA, sector, 256);
    uint32_t total = sector[60] | ((uint32_t)sector[61] << 16);
    int model = sector[27] != 0 && sector[27] != 0xffff;
    CHECK(w == 0 && (sector[49] & (1u << 9)) && total > 0 && model, "ATA IDENTIFY DEVICE (rep insw): LBA, sectors, model", total);
    uint32_t lba = 100;
    for (int i = 0; i < 256; i++)
        sector[i] = (uint16_t)(0x5a00 + i * 7);
    ata_setup(0x30, lba);                     /* WRITE SECTORS */
    w = ata_wait(1);
    if (w == 0) {
        outsw(ATA, sector, 256);
        w = ata_wait(0);
    }
    CHECK(w == 0, "ATA WRITE SECTORS (rep outsw)", inb(ATA + 7));
    outb(ATA + 7, 0xe7);                      /* FLUSH CACHE */
    w = ata_wait(0);
    CHECK(w == 0, "ATA FLUSH CACHE", inb(ATA + 7));
    ata_setup(0x20, lba);                     /* READ SECTORS */
    w = ata_wait(1);
    if (w == 0)
        insw(ATA, back, 256);
    int same = w == 0;
    for (int i = 0; i < 256 && same; i++)
        same = back[i] == sector[i];
    CHECK(same, "ATA READ SECTORS reads back what was written", back[0]);
}

static uint32_t privileges;

static void cpuid_leaves(void)
{
    uint32_t a, b, c, d;
    cpuid(1, &a, &b, &c, &d);
    CHECK(c & (1u << 31), "CPUID 1: hypervisor present (ECX bit 31)", c);
    cpuid(0x40000000, &a, &b, &c, &d);
    CHECK(b == 0x7263694d && c == 0x666f736f && d == 0x76482074 && a >= 0x40000005,
          "CPUID 0x40000000: \"Microsoft Hv\", max leaf >= 0x40000005", a);
    cpuid(0x40000001, &a, &b, &c, &d);
    CHECK(a == 0x31237648, "CPUID 0x40000001: interface \"Hv#1\"", a);
    cpuid(0x40000003, &a, &b, &c, &d);
    privileges = a;
    puts("hvtest: privileges ");
    puthex(a);
    puts("\n");
}

/* The hypercall page's calling convention (TLFS): in 64-bit mode RCX control, RDX input
 * GPA (or input for a fast call), R8 output, result in RAX; in 32-bit mode EDX:EAX control,
 * EBX:ECX input, EDI:ESI output, result in EDX:EAX. */
static uint64_t hypercall(uint64_t control, uint64_t input, uint64_t output)
{
#ifdef __x86_64__
    uint64_t result;
    register uint64_t r8 __asm__("r8") = output;
    __asm__ volatile("call %P[page]"
                     : "=a"(result), "+c"(control), "+d"(input), "+r"(r8)
                     : [page] "i"(HYPERCALL_PAGE)
                     : "memory", "r9", "r10", "r11");
    return result;
#else
    uint32_t lo, hi;
    __asm__ volatile("call %P[page]"
                     : "=a"(lo), "=d"(hi)
                     : [page] "i"(HYPERCALL_PAGE), "a"((uint32_t)control), "d"((uint32_t)(control >> 32)),
                       "b"((uint32_t)(input >> 32)), "c"((uint32_t)input),
                       "D"((uint32_t)(output >> 32)), "S"((uint32_t)output)
                     : "memory");
    return ((uint64_t)hi << 32) | lo;
#endif
}

static void hypercalls(void)
{
    if (!(privileges & PRIV_HYPERCALL_MSRS)) {
        skip("guest OS ID and hypercall page", "not offered");
        return;
    }
    uint64_t os_id = (1ull << 63) | (0x48ull << 48) | 0x110000;
    wrmsr(HV_X64_MSR_GUEST_OS_ID, os_id);
    CHECK(rdmsr(HV_X64_MSR_GUEST_OS_ID) == os_id, "HV_X64_MSR_GUEST_OS_ID reads back", (uint32_t)rdmsr(HV_X64_MSR_GUEST_OS_ID));
    wrmsr(HV_X64_MSR_HYPERCALL, HYPERCALL_PAGE | 1);
    uint64_t msr = rdmsr(HV_X64_MSR_HYPERCALL);
    CHECK((msr & 1) && (msr & ~0xfffull) == HYPERCALL_PAGE, "HV_X64_MSR_HYPERCALL enables the page", (uint32_t)msr);
    CHECK(*(volatile uint8_t *)HYPERCALL_PAGE != 0, "the hypervisor wrote the hypercall page's code", *(volatile uint8_t *)HYPERCALL_PAGE);
    uint64_t r = hypercall(0x0008 | (1u << 16), 0, 0);   /* HvCallNotifyLongSpinWait, fast */
    CHECK((r & 0xffff) == 0, "hypercall HvCallNotifyLongSpinWait (fast): HV_STATUS_SUCCESS", (uint32_t)r);
    r = hypercall(0x00fe, INPUT_PAGE, 0);
    CHECK((r & 0xffff) == 2, "hypercall of an unknown code: HV_STATUS_INVALID_HYPERCALL_CODE", (uint32_t)r);
    r = hypercall(0x0008 | (1u << 16) | (1ull << 32), 0, 0);   /* a rep count on a simple call */
    CHECK((r & 0xffff) == 3, "hypercall with a rep count on a simple call: HV_STATUS_INVALID_HYPERCALL_INPUT", (uint32_t)r);
    volatile uint64_t *in = (volatile uint64_t *)INPUT_PAGE;
    in[0] = 0; in[1] = 3; in[2] = 1;          /* HvCallFlushVirtualAddressSpace: all spaces, all processors */
    r = hypercall(0x0002, INPUT_PAGE, 0);
    CHECK((r & 0xffff) == 0, "hypercall HvCallFlushVirtualAddressSpace (input page): HV_STATUS_SUCCESS", (uint32_t)r);
    in[1] = 0x80000000u;                      /* a flag the TLFS does not define */
    r = hypercall(0x0002, INPUT_PAGE, 0);
    CHECK((r & 0xffff) == 5, "hypercall with undefined flags: HV_STATUS_INVALID_PARAMETER", (uint32_t)r);
}

static void vp_index_and_clock(void)
{
    if (privileges & PRIV_VP_INDEX)
        CHECK(rdmsr(HV_X64_MSR_VP_INDEX) == 0, "HV_X64_MSR_VP_INDEX is 0 on the BSP", (uint32_t)rdmsr(HV_X64_MSR_VP_INDEX));
    else
        skip("HV_X64_MSR_VP_INDEX", "not offered");
    if (privileges & PRIV_REFERENCE_COUNTER) {
        uint64_t t0 = rdmsr(HV_X64_MSR_TIME_REF_COUNT);
        ticks = 0;
        outb(PIC1 + 1, 0xfe);
        wait_for(&ticks, 3, 1000);            /* 10 ms ticks; the first may have been latched while masked */
        outb(PIC1 + 1, 0xff);
        uint64_t t1 = rdmsr(HV_X64_MSR_TIME_REF_COUNT);
        uint64_t d = t1 - t0;                  /* 100 ns units */
        CHECK(t0 > 0 && t1 > t0 && d >= 10000, "HV_X64_MSR_TIME_REF_COUNT advances (>= 1 ms over three PIT ticks)", (uint32_t)d);
    } else {
        skip("HV_X64_MSR_TIME_REF_COUNT", "not offered");
    }
}

static void apic(void)
{
    uint32_t version = mmio_read(APIC_BASE + 0x30);
    CHECK((version & 0xff) >= 0x10, "local APIC version register (xAPIC MMIO)", version);
    mmio_write(APIC_BASE + 0xf0, 0x100 | SPURIOUS_VECTOR);   /* SVR: enabled */
    mmio_write(APIC_BASE + 0x3e0, 0x0b);                     /* divide by 1 */
    mmio_write(APIC_BASE + 0x320, APIC_VECTOR);              /* LVT timer: one-shot */
    mmio_write(APIC_BASE + 0x380, 200000);                   /* 1 ms at 200 MHz */
    wait_for(&apic_fires, 1, 1000);
    CHECK(apic_fires == 1, "APIC timer interrupt, EOI by MMIO", apic_fires);
    if (!(privileges & PRIV_APIC_MSRS)) {
        skip("APIC MSRs and the VP assist page", "not offered");
        return;
    }
    wrmsr(HV_X64_MSR_TPR, 0x20);
    uint64_t tpr = rdmsr(HV_X64_MSR_TPR);
    wrmsr(HV_X64_MSR_TPR, 0);
    CHECK(tpr == 0x20, "HV_X64_MSR_TPR reads back", (uint32_t)tpr);
    eoi_by_msr = 1;
    mmio_write(APIC_BASE + 0x380, 200000);
    wait_for(&apic_fires, 2, 1000);
    CHECK(apic_fires == 2, "APIC timer interrupt, EOI by HV_X64_MSR_EOI", apic_fires);
    mmio_write(APIC_BASE + 0x380, 200000);
    wait_for(&apic_fires, 3, 1000);
    CHECK(apic_fires == 3, "a second interrupt after the MSR EOI (the ISR bit was cleared)", apic_fires);
    wrmsr(HV_X64_MSR_VP_ASSIST_PAGE, ASSIST_PAGE | 1);
    uint64_t assist = rdmsr(HV_X64_MSR_VP_ASSIST_PAGE);
    CHECK(assist == (ASSIST_PAGE | 1), "HV_X64_MSR_VP_ASSIST_PAGE enables the page", (uint32_t)assist);
    mmio_write(APIC_BASE + 0x320, 0x10000);                  /* timer masked */
}

void main(void)
{
    uart_autoconfig();
    cpuid_leaves();
    pic_pit();
    rtc();
    ata();
    hypercalls();
    vp_index_and_clock();
    apic();
    CHECK(exceptions == 0 && other_vectors == 0, "no unexpected interrupt or exception", last_other);
    puts("hvtest: ");
    putu(passed);
    puts("/");
    putu(checks);
    puts(passed == checks ? " passed\n" : " passed: FAILED\n");
}
