//! The C++ allocation operators: `operator new` / `new[]` / `delete` / `delete[]`, with the
//! sized, aligned (`std::align_val_t`) and `std::nothrow` forms, under their Itanium
//! names (the 20 that libstdc++ exports). See `docs/preload.md`.
//!
//! This library is pure Rust and does not link a C++ runtime, yet `operator new` must call
//! the program's new-handler and throw `std::bad_alloc` when memory runs out. The C++
//! runtime's functions are looked up only when an allocation has failed
//! (`std::get_new_handler`, `std::__throw_bad_alloc`, and the runtime's own `nothrow`
//! operators), never on the fast path.
//!
//! # How an exception leaves a pure-Rust `operator new`
//!
//! The release profile is `panic = "abort"`. With it every Rust function, `extern
//! "C-unwind"` ones included, is compiled as one that cannot unwind: a C++ exception that
//! reaches a Rust frame stops the process ("panic in a function that cannot unwind"). So
//! no Rust frame may be on the stack when the new-handler or `__throw_bad_alloc` runs:
//!
//! - The four throwing forms (`_Znwm`, `_Znam`, `_ZnwmSt11align_val_t`,
//!   `_ZnamSt11align_val_t`) are naked functions: a few instructions that call a Rust
//!   function for the allocation (the same code as `malloc`'s fast path) and return its
//!   pointer when it is not null. That Rust call has returned before anything can throw.
//! - On null they jump (a tail call: their own frame is gone) to `throwing_loop`, also
//!   naked, which repeats libstdc++'s loop: ask a Rust function which C++ function
//!   to call next (the current new-handler, or the runtime's `std::__throw_bad_alloc` when
//!   there is none), call it, try the allocation again. The handler or the thrower runs
//!   with only assembly frames between it and the C++ caller; those carry call-frame
//!   information (`.cfi_*` directives) and no personality routine, so the unwinder steps
//!   through them to the caller's `catch`.
//! - The `nothrow` forms are Rust: they allocate, and on failure return null at once when
//!   no new-handler is installed. When there is one they call the C++ runtime's own
//!   `nothrow` operator of the same name (`dlsym(RTLD_NEXT, ...)`), which calls our
//!   throwing form inside its `try`/`catch` and returns null on an exception: libstdc++'s
//!   semantics, with the C++ runtime doing the catching. No exception reaches Rust.
//! - The `delete` forms are Rust and never throw.
//!
//! The operators exist on x86_64 Linux only (the assembly); elsewhere this module exports
//! nothing and the C++ runtime's operators run over this library's `malloc`.
//!
//! # Sizes and alignment
//!
//! `operator new(n)` is `malloc(n)` without `errno` (`n` rounded up to 16, the default
//! alignment, on the thread cache's fast path; `new(0)` is a unique pointer). Sized
//! `delete(p, n)` is `free_sized(p, n)`, the unsized `free`'s fast path (the size is only
//! checked, in debug and hardened builds). The
//! aligned forms are `aligned_alloc(a, n)` and `free_aligned_sized(p, a, n)`; an alignment
//! that is not a power of two fails (`std::bad_alloc`, or null), as in libstdc++.

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub use imp::*;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(non_snake_case)]
mod imp {
    use crate::c_api::{
        alloc_aligned, alloc_c, free_aligned_sized_impl, free_impl, free_sized_impl,
    };
    use core::ffi::{CStr, c_void};
    use core::ptr::null_mut;

    // -----------------------------------------------------------------------------------
    // What the assembly calls. Plain `extern "C"` Rust functions: they never unwind.

    /// The allocation of `operator new(size)`: `malloc`'s, without `errno`.
    extern "C" fn new_fast(size: usize) -> *mut c_void {
        alloc_c(size)
    }

    /// The allocation of `operator new(size, align)`: null if `align` is not a power of
    /// two. The default forms come here too on their slow path, with `align` 1.
    extern "C" fn new_aligned_fast(size: usize, align: usize) -> *mut c_void {
        if !align.is_power_of_two() {
            return null_mut();
        }
        alloc_aligned(align, size)
    }

    /// After a failed allocation: the C++ function [`throwing_loop`] calls next. The
    /// current new-handler if there is one (and the alignment is valid); otherwise the
    /// runtime's `std::__throw_bad_alloc`. Stops the process when neither can be found:
    /// `operator new` cannot return null, and there is no C++ runtime to throw with.
    extern "C" fn new_failure(align: usize) -> *const c_void {
        if align.is_power_of_two() {
            let handler = current_new_handler();
            if !handler.is_null() {
                return handler;
            }
        }
        let throw = cxx_symbol(c"_ZSt17__throw_bad_allocv"); // libstdc++
        if !throw.is_null() {
            return throw;
        }
        let throw = cxx_symbol(c"_ZNSt3__117__throw_bad_allocEv"); // libc++
        if !throw.is_null() {
            return throw;
        }
        spanalloc::internals::check::fatal(
            "operator new: out of memory and no C++ runtime found to throw std::bad_alloc",
        )
    }

    /// `std::get_new_handler()`, or null when it is unset or there is no C++ runtime.
    fn current_new_handler() -> *const c_void {
        let get = cxx_symbol(c"_ZSt15get_new_handlerv");
        if get.is_null() {
            return core::ptr::null();
        }
        // SAFETY: `std::get_new_handler` takes nothing, returns a function pointer and is
        // `noexcept`.
        let get: unsafe extern "C" fn() -> *const c_void = unsafe { core::mem::transmute(get) };
        // SAFETY: as above.
        unsafe { get() }
    }

    /// A C++ runtime function by its mangled name: from the global scope, else from a
    /// runtime loaded privately (`dlopen` with `RTLD_LOCAL`, as a plugin's dependency).
    /// Only ever called after an allocation failed (`dlsym` takes the loader's lock and may
    /// allocate; no allocator lock is held then).
    fn cxx_symbol(name: &CStr) -> *mut c_void {
        // SAFETY: a NUL-terminated name; RTLD_DEFAULT is a valid pseudo-handle.
        let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        if !sym.is_null() {
            return sym;
        }
        for lib in [c"libstdc++.so.6", c"libc++.so.1", c"libc++abi.so.1"] {
            // SAFETY: NUL-terminated; RTLD_NOLOAD only finds a library already loaded.
            let handle = unsafe { libc::dlopen(lib.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
            if handle.is_null() {
                continue;
            }
            // SAFETY: a handle from dlopen; a NUL-terminated name.
            let sym = unsafe { libc::dlsym(handle, name.as_ptr()) };
            // SAFETY: drops the reference RTLD_NOLOAD took; whoever loaded the library
            // still holds theirs, so `sym` stays valid.
            unsafe { libc::dlclose(handle) };
            if !sym.is_null() {
                return sym;
            }
        }
        null_mut()
    }

    /// After a `nothrow` form failed: null, unless a new-handler is installed; then the C++
    /// runtime's own `nothrow` operator `name`, which calls our throwing form (and through
    /// it the handler) inside `try`/`catch` and returns null on any exception.
    #[cold]
    #[inline(never)]
    fn nothrow_failed(
        size: usize,
        align: Option<usize>,
        nothrow: *const c_void,
        name: &CStr,
    ) -> *mut c_void {
        if align.is_some_and(|a| !a.is_power_of_two()) || current_new_handler().is_null() {
            return null_mut();
        }
        // SAFETY: a NUL-terminated name; RTLD_NEXT: the next definition after this
        // library, the C++ runtime's.
        let next = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
        if next.is_null() {
            return null_mut();
        }
        match align {
            None => {
                type F = unsafe extern "C" fn(usize, *const c_void) -> *mut c_void;
                // SAFETY: `operator new(size_t, const nothrow_t &) noexcept` (or `new[]`).
                let f: F = unsafe { core::mem::transmute(next) };
                // SAFETY: as above; it does not unwind.
                unsafe { f(size, nothrow) }
            }
            Some(align) => {
                type F = unsafe extern "C" fn(usize, usize, *const c_void) -> *mut c_void;
                // SAFETY: `operator new(size_t, align_val_t, const nothrow_t &) noexcept`
                // (or `new[]`).
                let f: F = unsafe { core::mem::transmute(next) };
                // SAFETY: as above; it does not unwind.
                unsafe { f(size, align, nothrow) }
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // The throwing forms: assembly, so that no Rust frame is on the stack when C++ throws.

    /// The slow path of the throwing forms, reached by a tail jump with `rdi` = size, `rsi`
    /// = alignment (1 for the default forms): until an allocation succeeds, calls what
    /// [`new_failure`] names (the new-handler, which may return or throw, or the runtime's
    /// `__throw_bad_alloc`, which throws) and tries again. Its frame is described by
    /// `.cfi_*` directives (no personality), so an exception passes through to the caller.
    ///
    /// # Safety
    /// Only for the tail jumps of the throwing forms below.
    #[unsafe(naked)]
    unsafe extern "C-unwind" fn throwing_loop(size: usize, align: usize) -> *mut c_void {
        core::arch::naked_asm!(
            ".cfi_startproc",
            "push rbx",
            ".cfi_adjust_cfa_offset 8",
            ".cfi_offset rbx, -16",
            "push r12",
            ".cfi_adjust_cfa_offset 8",
            ".cfi_offset r12, -24",
            "push rax", // keeps the stack 16-aligned for the calls
            ".cfi_adjust_cfa_offset 8",
            "mov rbx, rdi",
            "mov r12, rsi",
            "2:",
            "mov rdi, r12",
            "call {failure}",
            "call rax", // the new-handler or __throw_bad_alloc: may throw
            "mov rdi, rbx",
            "mov rsi, r12",
            "call {retry}",
            "test rax, rax",
            "jz 2b",
            "pop rcx",
            ".cfi_adjust_cfa_offset -8",
            "pop r12",
            ".cfi_adjust_cfa_offset -8",
            ".cfi_restore r12",
            "pop rbx",
            ".cfi_adjust_cfa_offset -8",
            ".cfi_restore rbx",
            "ret",
            ".cfi_endproc",
            failure = sym new_failure,
            retry = sym new_aligned_fast,
        )
    }

    /// The body of `operator new(size_t)` and `operator new[](size_t)`: the allocation, and
    /// on null the tail jump to [`throwing_loop`] with alignment 1.
    macro_rules! throwing_new {
        ($(#[$doc:meta])* $name:ident) => {
            $(#[$doc])*
            ///
            /// # Safety
            /// Always safe to call (from C++); the result is raw memory for the caller.
            #[unsafe(naked)]
            #[unsafe(no_mangle)]
            pub unsafe extern "C-unwind" fn $name(size: usize) -> *mut c_void {
                core::arch::naked_asm!(
                    ".cfi_startproc",
                    "push rdi", // keeps the size; 16-aligns the stack for the call
                    ".cfi_adjust_cfa_offset 8",
                    "call {fast}",
                    "pop rdi",
                    ".cfi_adjust_cfa_offset -8",
                    "test rax, rax",
                    "jz 2f",
                    "ret",
                    "2:",
                    "mov esi, 1",
                    "jmp {slow}",
                    ".cfi_endproc",
                    fast = sym new_fast,
                    slow = sym throwing_loop,
                )
            }
        };
    }

    /// The body of `operator new(size_t, align_val_t)` and its `new[]`.
    macro_rules! throwing_new_aligned {
        ($(#[$doc:meta])* $name:ident) => {
            $(#[$doc])*
            ///
            /// # Safety
            /// Always safe to call (from C++); the result is raw memory for the caller.
            #[unsafe(naked)]
            #[unsafe(no_mangle)]
            pub unsafe extern "C-unwind" fn $name(size: usize, align: usize) -> *mut c_void {
                core::arch::naked_asm!(
                    ".cfi_startproc",
                    "push rsi",
                    ".cfi_adjust_cfa_offset 8",
                    "push rdi",
                    ".cfi_adjust_cfa_offset 8",
                    "sub rsp, 8",
                    ".cfi_adjust_cfa_offset 8",
                    "call {fast}",
                    "add rsp, 8",
                    ".cfi_adjust_cfa_offset -8",
                    "pop rdi",
                    ".cfi_adjust_cfa_offset -8",
                    "pop rsi",
                    ".cfi_adjust_cfa_offset -8",
                    "test rax, rax",
                    "jz 2f",
                    "ret",
                    "2:",
                    "jmp {slow}",
                    ".cfi_endproc",
                    fast = sym new_aligned_fast,
                    slow = sym throwing_loop,
                )
            }
        };
    }

    throwing_new! {
        /// `operator new(size_t)`: `size` bytes, 16-aligned; on failure calls the
        /// new-handler until it succeeds, or throws `std::bad_alloc` when there is none.
        _Znwm
    }
    throwing_new! {
        /// `operator new[](size_t)`: as `operator new(size_t)`.
        _Znam
    }
    throwing_new_aligned! {
        /// `operator new(size_t, align_val_t)`: `size` bytes aligned to `align`; failure as
        /// `operator new(size_t)`; `std::bad_alloc` at once for an alignment that is not a
        /// power of two.
        _ZnwmSt11align_val_t
    }
    throwing_new_aligned! {
        /// `operator new[](size_t, align_val_t)`: as `operator new(size_t, align_val_t)`.
        _ZnamSt11align_val_t
    }

    // -----------------------------------------------------------------------------------
    // The nothrow forms.

    /// `operator new(size_t, const nothrow_t &)`: as `operator new(size_t)`, but null on
    /// failure (an exception from the new-handler included).
    ///
    /// # Safety
    /// Always safe to call.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn _ZnwmRKSt9nothrow_t(size: usize, nt: *const c_void) -> *mut c_void {
        let p = alloc_c(size);
        if !p.is_null() {
            return p;
        }
        nothrow_failed(size, None, nt, c"_ZnwmRKSt9nothrow_t")
    }

    /// `operator new[](size_t, const nothrow_t &)`: as the `new` form.
    ///
    /// # Safety
    /// Always safe to call.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn _ZnamRKSt9nothrow_t(size: usize, nt: *const c_void) -> *mut c_void {
        let p = alloc_c(size);
        if !p.is_null() {
            return p;
        }
        nothrow_failed(size, None, nt, c"_ZnamRKSt9nothrow_t")
    }

    /// `operator new(size_t, align_val_t, const nothrow_t &)`: as the aligned throwing
    /// form, but null on failure.
    ///
    /// # Safety
    /// Always safe to call.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn _ZnwmSt11align_val_tRKSt9nothrow_t(
        size: usize,
        align: usize,
        nt: *const c_void,
    ) -> *mut c_void {
        let p = new_aligned_fast(size, align);
        if !p.is_null() {
            return p;
        }
        nothrow_failed(size, Some(align), nt, c"_ZnwmSt11align_val_tRKSt9nothrow_t")
    }

    /// `operator new[](size_t, align_val_t, const nothrow_t &)`: as the `new` form.
    ///
    /// # Safety
    /// Always safe to call.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn _ZnamSt11align_val_tRKSt9nothrow_t(
        size: usize,
        align: usize,
        nt: *const c_void,
    ) -> *mut c_void {
        let p = new_aligned_fast(size, align);
        if !p.is_null() {
            return p;
        }
        nothrow_failed(size, Some(align), nt, c"_ZnamSt11align_val_tRKSt9nothrow_t")
    }

    // -----------------------------------------------------------------------------------
    // The delete forms: `free`, `free_sized` and `free_aligned_sized`.

    /// Generates the `delete` forms that take no size: each is `free`.
    macro_rules! unsized_delete {
        ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*);)*) => {$(
            $(#[$doc])*
            /// `delete(nullptr)` does nothing.
            ///
            /// # Safety
            /// As `free`: `ptr` is null or came from these operators (or `malloc`), and is
            /// not used afterwards.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn $name(ptr: *mut c_void $(, $arg: $ty)*) {
                $(let _ = $arg;)*
                // SAFETY: per the caller.
                unsafe { free_impl(ptr) }
            }
        )*};
    }

    unsized_delete! {
        /// `operator delete(void *)`.
        _ZdlPv();
        /// `operator delete[](void *)`.
        _ZdaPv();
        /// `operator delete(void *, const nothrow_t &)`.
        _ZdlPvRKSt9nothrow_t(_nt: *const c_void);
        /// `operator delete[](void *, const nothrow_t &)`.
        _ZdaPvRKSt9nothrow_t(_nt: *const c_void);
        /// `operator delete(void *, align_val_t)`.
        _ZdlPvSt11align_val_t(_align: usize);
        /// `operator delete[](void *, align_val_t)`.
        _ZdaPvSt11align_val_t(_align: usize);
        /// `operator delete(void *, align_val_t, const nothrow_t &)`.
        _ZdlPvSt11align_val_tRKSt9nothrow_t(_align: usize, _nt: *const c_void);
        /// `operator delete[](void *, align_val_t, const nothrow_t &)`.
        _ZdaPvSt11align_val_tRKSt9nothrow_t(_align: usize, _nt: *const c_void);
    }

    /// `operator delete(void *, size_t)`: `free_sized(ptr, size)`, which frees without a
    /// page-map lookup when the thread owns the object's span.
    ///
    /// # Safety
    /// `ptr` is null or came from `operator new(size)` (or `new[]`) with this `size`, and
    /// is not used afterwards.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn _ZdlPvm(ptr: *mut c_void, size: usize) {
        // SAFETY: per the caller.
        unsafe { free_sized_impl(ptr, size) }
    }

    /// `operator delete[](void *, size_t)`: as `operator delete(void *, size_t)`.
    ///
    /// # Safety
    /// As `operator delete(void *, size_t)`.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn _ZdaPvm(ptr: *mut c_void, size: usize) {
        // SAFETY: per the caller.
        unsafe { free_sized_impl(ptr, size) }
    }

    /// `operator delete(void *, size_t, align_val_t)`: `free_aligned_sized(ptr, align,
    /// size)`.
    ///
    /// # Safety
    /// `ptr` is null or came from `operator new(size, align)` (or `new[]`) with this size
    /// and alignment, and is not used afterwards.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn _ZdlPvmSt11align_val_t(ptr: *mut c_void, size: usize, align: usize) {
        // SAFETY: per the caller.
        unsafe { free_aligned_sized_impl(ptr, align, size) }
    }

    /// `operator delete[](void *, size_t, align_val_t)`: as the `delete` form.
    ///
    /// # Safety
    /// As `operator delete(void *, size_t, align_val_t)`.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn _ZdaPvmSt11align_val_t(ptr: *mut c_void, size: usize, align: usize) {
        // SAFETY: per the caller.
        unsafe { free_aligned_sized_impl(ptr, align, size) }
    }
}
