/* bootdisk: a boot sector and two more sectors, for hvstack's firmware partitions.
 *
 * The BIOS (SeaBIOS) loads sector 0 at 0000:7C00 and jumps there in real mode with DL = the
 * boot drive.  This prints on COM1 (polled) and on the VGA text screen (written directly
 * to B800:0000), reads sectors 1 and 2 by INT 13h AH=02h to 0000:8000, checks their
 * signature and checksum, says so on both, and halts with interrupts off (the backend
 * reports that as the guest being done). */
        .code16
        .section .text
        .globl _start
_start:
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $0x7c00, %sp
        movb    %dl, boot_drive
        sti
        movw    $0xb800, %ax
        movw    %ax, %fs
        movw    $msg_hello, %si
        call    print
        /* INT 13h AH=02h: read 2 sectors from cylinder 0, head 0, sector 2 to 0000:8000. */
        movw    $0x0202, %ax
        movw    $0x0002, %cx
        xorb    %dh, %dh
        movb    boot_drive, %dl
        movw    $0x8000, %bx
        int     $0x13
        jc      read_failed
        cmpl    $0x5a5a4b44, 0x8000     /* "DKZZ": sector 1's signature */
        jne     bad_data
        movw    $0x8000, %si            /* sum of the 512 words of sectors 1 and 2 */
        movw    $512, %cx
        xorw    %bx, %bx
1:      lodsw
        addw    %ax, %bx
        loop    1b
        cmpw    $0, %bx                 /* the last word makes the sum 0 */
        jne     bad_data
        movw    $msg_ok, %si
        call    print
        jmp     done
read_failed:
        movw    $msg_read_failed, %si
        call    print
        jmp     done
bad_data:
        movw    $msg_bad, %si
        call    print
done:
        movw    $msg_done, %si
        call    print
        cli
2:      hlt
        jmp     2b

/* Print the NUL-terminated string at DS:SI on COM1 and on the screen's next line. */
print:
        movw    screen_at, %di
1:      lodsb
        testb   %al, %al
        jz      3f
        cmpb    $'\n', %al
        je      4f
        movb    $0x07, %ah
        movw    %ax, %fs:(%di)
        addw    $2, %di
        call    putc
        jmp     1b
4:      call    putc
        movb    $'\r', %al
        call    putc
        jmp     1b
3:      movw    screen_at, %ax          /* the next line: 160 bytes a row */
        addw    $160, %ax
        movw    %ax, screen_at
        ret

putc:
        movw    $0x3fd, %dx
        movb    %al, %ah
5:      inb     %dx, %al
        testb   $0x20, %al
        jz      5b
        movb    %ah, %al
        movw    $0x3f8, %dx
        outb    %al, %dx
        ret

msg_hello:       .asciz "hvstack boot sector: started by the BIOS from the ATA disk\n"
msg_ok:          .asciz "hvstack boot sector: INT 13h read sectors 1-2: signature and checksum ok\n"
msg_read_failed: .asciz "hvstack boot sector: INT 13h read FAILED\n"
msg_bad:         .asciz "hvstack boot sector: sectors 1-2 do not check: FAILED\n"
msg_done:        .asciz "hvstack boot sector: done, halting\n"
boot_drive:      .byte 0
screen_at:       .word 160 * 20         /* below what the BIOS wrote */

        .org    510
        .word   0xaa55

/* Sectors 1 and 2: a signature, a pattern, and a word that makes the 512-word sum 0. */
        .long   0x5a5a4b44
        .set    i, 0
        .rept   509
        .word   (0x1234 + i * 0x0101) & 0xffff
        .set    i, i + 1
        .endr
        .word   (-(0x4b44 + 0x5a5a + 509 * 0x1234 + 0x0101 * (508 * 509 / 2))) & 0xffff
        .section .note.GNU-stack, "", @progbits
