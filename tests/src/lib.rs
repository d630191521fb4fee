//! Integration tests that boot the tandem image under QEMU.
