/* hvtest's entry: 32-bit protected mode at 1 MiB, paging off (partitions/cpu/boot.py).
 * Loads its own GDT and IDT, then runs main(); interrupt stubs call isr(vector, error). */
        .code32
        .section .text.start, "ax"
        .globl _start
_start:
        cli
        lgdt    gdt_desc
        ljmp    $0x08, $1f
1:      movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    %ax, %fs
        movw    %ax, %gs
        movl    $__bss_start, %edi     /* zero .bss (not in the flat image; a reset keeps RAM) */
        movl    $__bss_end, %ecx
        subl    %edi, %ecx
        xorl    %eax, %eax
        cld
        rep stosb
        movl    $stack_top, %esp
        call    idt_init
        call    main
        cli
2:      hlt
        jmp     2b

/* One stub per vector 0..255: push a dummy error code where the CPU pushes none. */
        .altmacro
        .macro  stub n
        .if (\n == 8) || (\n == 10) || (\n == 11) || (\n == 12) || (\n == 13) || (\n == 14) || (\n == 17)
        pushl   $\n
        .else
        pushl   $0
        pushl   $\n
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
        pushal
        pushl   36(%esp)        /* error code */
        pushl   36(%esp)        /* vector (pushed below the error code: 32 + 4) */
        call    isr
        addl    $8, %esp
        popal
        addl    $8, %esp
        iret

        .section .data
        .balign 8
gdt:    .quad   0
        .quad   0x00cf9a000000ffff      /* 0x08: code, flat, 32-bit */
        .quad   0x00cf92000000ffff      /* 0x10: data, flat */
gdt_desc:
        .word   gdt_desc - gdt - 1
        .long   gdt

        .section .bss
        .balign 16
        .space  16384
stack_top:
        .section .note.GNU-stack, "", @progbits
