#!/bin/sh
# Rebuild the real test guests from their sources, byte for byte (the committed binaries
# are what this makes with the toolchain named in toolchain.txt; tests/unit/test_guests.py
# checks that where the same toolchain is installed).  Needs gcc (with -m32), as and ld.
#   sh partitions/guests/build.sh [OUTDIR]     (default: partitions/guests)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
CFLAGS="-m32 -march=i686 -mgeneral-regs-only -ffreestanding -fno-pic -fno-pie -fno-stack-protector -fno-asynchronous-unwind-tables -fno-ident -nostdlib -Os -Wall -Werror"
# hvtest32: the 32-bit test kernel (entered at 1 MiB in protected mode).
cd "$here/hvtest"
gcc $CFLAGS -c start.S -o "$tmp/start.o"
gcc $CFLAGS -c hvtest.c -o "$tmp/hvtest.o"
ld -m elf_i386 -T link.ld --build-id=none --no-warn-rwx-segments -nostdlib "$tmp/start.o" "$tmp/hvtest.o" -o "$tmp/hvtest32.elf"
objcopy -O binary "$tmp/hvtest32.elf" "$out/hvtest32.bin"
# hvtest64: the same checks in 64-bit mode (entered at 1 MiB in 32-bit mode, or at 1 MiB + 16
# in long mode).
CFLAGS64=$(echo "$CFLAGS" | sed 's/-m32 -march=i686/-m64 -mno-red-zone/')
gcc $CFLAGS64 -c start64.S -o "$tmp/start64.o"
gcc $CFLAGS64 -c hvtest.c -o "$tmp/hvtest64.o"
ld -m elf_x86_64 -T link.ld --build-id=none --no-warn-rwx-segments -nostdlib "$tmp/start64.o" "$tmp/hvtest64.o" -o "$tmp/hvtest64.elf"
objcopy -O binary "$tmp/hvtest64.elf" "$out/hvtest64.bin"
# bootdisk: a boot sector and two sectors it reads by INT 13h (the first 1.5 KiB of a disk).
cd "$here/bootdisk"
as --32 bootdisk.S -o "$tmp/bootdisk.o"
ld -m elf_i386 -Ttext 0x7c00 --build-id=none --no-warn-rwx-segments -nostdlib "$tmp/bootdisk.o" -o "$tmp/bootdisk.elf"
objcopy -O binary -j .text "$tmp/bootdisk.elf" "$out/bootdisk.bin"
