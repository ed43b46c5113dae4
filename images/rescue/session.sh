#!/bin/sh
# The rescue image's session, the check its build replays on the image alone,
# and its /init: the disk tools at work on image files in /tmp (in RAM at
# boot). These tools work on plain files: no loop device is needed. Each step
# prints a marker the boot check expects; any failure ends the script non-zero.
set -eu
mount -t proc proc /proc   # mke2fs and e2fsck read /proc/mounts
work=/tmp/rescue
rm -rf "$work"
mkdir -p "$work"
cd "$work"

# A disk with a GPT: a Linux partition and an EFI system partition.
truncate -s 40M disk.img
printf 'label: gpt\nsize=16MiB, type=linux, name=data\nsize=8MiB, type=uefi, name=efi\n' \
    | sfdisk -q disk.img
partitions=$(sfdisk --dump disk.img | grep -c '^disk.img')
partx --show disk.img
echo "RESCUE-SFDISK-OK $partitions partitions"

# An ext4 filesystem in a file: make it, write to it, check it, grow it.
mkfs.ext4 -q -F -L rescue fs.img 16M
echo 'hello from the rescue image' >note.txt
debugfs -w -R 'write note.txt note.txt' fs.img
echo "RESCUE-DEBUGFS-OK $(debugfs -R 'cat /note.txt' fs.img 2>/dev/null)"
e2fsck -fp fs.img
resize2fs -p fs.img 24M
e2fsck -fn fs.img
tune2fs -l fs.img | grep -E '^(Filesystem volume name|Block count):'
blkid -c /dev/null fs.img  # no cache in /run: nothing the session writes stays
echo "RESCUE-EXT4-OK $(dumpe2fs -h fs.img 2>/dev/null | grep -c 'clean')"

# A FAT filesystem, as an EFI system partition holds.
mkfs.fat -C -n EFI efi.img 8192 >/dev/null
fsck.fat -n efi.img
echo "RESCUE-FAT-OK $(blkid -c /dev/null -s TYPE -o value efi.img)"

wipefs --all --quiet fs.img
cd /
rm -rf "$work"
umount /proc
echo RESCUE-DONE
