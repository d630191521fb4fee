//! Symbols the precompiled `core` refers to even with `panic = "abort"`.

#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

#[unsafe(no_mangle)]
extern "C" fn _Unwind_Resume() -> ! {
    super::power::halt_forever()
}
