"""One exception tree: the CLI turns any NbicError into one clear line."""


class NbicError(Exception):
    """Base of every error nbic reports to its user."""


class UsageError(NbicError):
    """The user asked for something that cannot work as asked."""


class FormatError(NbicError):
    """Malformed archive or image input; the message says where (a byte offset)."""

    def __init__(self, message: str, offset: int | None = None):
        self.offset = offset
        super().__init__(message)


class ElfError(FormatError):
    """A program or library in the rootfs has malformed ELF headers; the message names it."""


class CompressionError(FormatError):
    """A compressed segment could not be decoded, or a setting is not kernel-safe."""


class FieldOverflowError(NbicError):
    """An entry's value does not fit the newc header (size over 4 GiB, huge ids)."""


class SpecError(NbicError):
    """A gen_init_cpio spec list line could not be parsed."""


class RootfsError(NbicError):
    """The reference root filesystem is missing, unreadable or lacks what is asked."""


class MissingFileError(RootfsError):
    """A listed path does not exist in the rootfs (an error only with --strict)."""


class UnsafePathError(NbicError):
    """An archive entry would be written outside the target, or through a symlink."""


class OutputError(NbicError):
    """An output could not be written (disk full, file too large), or nbic will not
    write there (over one of its inputs, a directory, a symlink it would replace)."""


class OutputClosed(OutputError):
    """The reader of standard output went away (EPIPE), as `cpio-list | head` does."""


class BootError(NbicError):
    """QEMU could not be started, or the boot check could not be judged."""


class QemuError(BootError):
    """QEMU exited with an error status before the console gave a verdict."""

    def __init__(self, message: str, *, guest_output: bool):
        self.guest_output = guest_output  # whether the guest had printed anything
        super().__init__(message)


class KernelError(NbicError):
    """A kernel could not be fetched, unpacked or understood."""


class RecipeError(UsageError):
    """A recipe (images/NAME/recipe.toml) or its lock is malformed; the message names
    the file and the key."""


class BuildError(NbicError):
    """A recipe's image failed its boot check, or a locked rebuild differs from its lock."""
