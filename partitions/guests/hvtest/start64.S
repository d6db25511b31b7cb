/* hvtest64's entries.  At 1 MiB, 32-bit protected mode, paging off (as hvtest32): build an
 * identity map of the first 4 GiB with 2 MiB pages and switch to long mode.  At 1 MiB + 16
 * (announced by "HVSTK64" at +8), 64-bit mode with paging on and the loader's flat GDT
 * (selector 0x08 code, 0x10 data), as Firecracker enters a kernel: what the backends use.
 * Then its own GDT and IDT, and main(); interrupt stubs call isr(vector, error). */
        .section .text.start, "ax"
        .code32
        .globl _start
_start:
        jmp     start32
        .balign 8
        .ascii  "HVSTK64\0"             /* partitions/cpu/boot.py: enter at +16 in long mode */
entry64:
        .code64
        jmp     start64
        .code32
start32:
        cli
        lgdt    gdt_desc
        /* PML4[0] -> PDPT; PDPT[0..3] -> four page directories; 2048 2 MiB pages. */
        movl    $pml4, %edi
        movl    $pdpt + 0x3, %eax
        movl    %eax, (%edi)
        movl    $0, 4(%edi)
        movl    $pdpt, %edi
        movl    $pd + 0x3, %eax
        movl    $4, %ecx
1:      movl    %eax, (%edi)
        movl    $0, 4(%edi)
        addl    $0x1000, %eax
        addl    $8, %edi
        loop    1b
        movl    $pd, %edi
        movl    $0x83, %eax             /* present, writable, 2 MiB */
        xorl    %edx, %edx
        movl    $2048, %ecx
2:      movl    %eax, (%edi)
        movl    %edx, 4(%edi)
        addl    $0x200000, %eax
        adcl    $0, %edx
        addl    $8, %edi
        loop    2b
        movl    %cr4, %eax
        orl     $0x20, %eax             /* PAE */
        movl    %eax, %cr4
        movl    $pml4, %eax
        movl    %eax, %cr3
        movl    $0xc0000080, %ecx       /* EFER.LME */
        rdmsr
        orl     $0x100, %eax
        wrmsr
        movl    %cr0, %eax
        orl     $0x80000001, %eax       /* PG, PE */
        movl    %eax, %cr0
        ljmp    $0x08, $start64

        .code64
start64:
        lgdt    gdt_desc
        movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    %ax, %fs
        movw    %ax, %gs
        movq    $stack_top, %rsp
        pushq   $0x08                   /* reload CS from our GDT */
        leaq    3f(%rip), %rax
        pushq   %rax
        lretq
3:      movq    $__bss_start, %rdi      /* zero .bss (not in the flat image; a reset keeps RAM) */
        movq    $__bss_end, %rcx
        subq    %rdi, %rcx
        xorl    %eax, %eax
        cld
        rep stosb
        call    idt_init
        call    main
        cli
4:      hlt
        jmp     4b

/* One stub per vector 0..255: push a dummy error code where the CPU pushes none. */
        .altmacro
        .macro  stub n
        .if (\n == 8) || (\n == 10) || (\n == 11) || (\n == 12) || (\n == 13) || (\n == 14) || (\n == 17)
        pushq   $\n
        .else
        pushq   $0
        pushq   $\n
        .endif
        jmp     isr_common
        .endm

        .balign 16
        .globl  isr_stubs
isr_stubs:
        .set    i, 0
        .rept   256
        .balign 16
        stub    %i
        .set    i, i + 1
        .endr

isr_common:
        pushq   %rax
        pushq   %rcx
        pushq   %rdx
        pushq   %rsi
        pushq   %rdi
        pushq   %r8
        pushq   %r9
        pushq   %r10
        pushq   %r11
        movq    72(%rsp), %rdi          /* vector */
        movq    80(%rsp), %rsi          /* error code */
        call    isr
        popq    %r11
        popq    %r10
        popq    %r9
        popq    %r8
        popq    %rdi
        popq    %rsi
        popq    %rdx
        popq    %rcx
        popq    %rax
        addq    $16, %rsp
        iretq

        .section .data
        .balign 8
gdt:    .quad   0
        .quad   0x00af9a000000ffff      /* 0x08: code, 64-bit */
        .quad   0x00cf92000000ffff      /* 0x10: data, flat */
gdt_desc:
        .word   gdt_desc - gdt - 1
        .quad   gdt

        .section .pgtables, "aw", @nobits    /* after .bss: zeroing .bss leaves them be */
        .balign 4096
pml4:   .space  4096
pdpt:   .space  4096
pd:     .space  4 * 4096

        .section .bss
        .balign 16
        .space  16384
stack_top:
        .section .note.GNU-stack, "", @progbits
