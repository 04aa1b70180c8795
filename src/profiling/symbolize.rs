//! Address to function, file and line, at dump time: the `backtrace` crate's resolver (the
//! binaries' DWARF through `gimli`) with the `profiling` feature; nothing without it (then
//! `pprof` symbolizes from the binaries itself). See `lib.rs` for an overview.

/// One function of a location, innermost (inlined) first.
#[derive(Clone, Debug, Default)]
pub(super) struct Frame {
    /// Demangled, without the hash.
    pub name: String,
    /// As in the symbol table.
    pub system_name: String,
    pub file: String,
    pub line: u32,
}

/// The functions at code address `addr` (a call instruction: a return address minus one),
/// innermost first; empty when unknown or without the `profiling` feature.
#[cfg(feature = "profiling")]
pub(super) fn frames(addr: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    backtrace::resolve(addr as *mut core::ffi::c_void, |sym| {
        let Some(name) = sym.name() else {
            return;
        };
        out.push(Frame {
            name: format!("{name:#}"),
            system_name: String::from_utf8_lossy(name.as_bytes()).into_owned(),
            file: sym
                .filename()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            line: sym.lineno().unwrap_or(0),
        });
    });
    out
}

/// Without the `profiling` feature: no symbols.
#[cfg(not(feature = "profiling"))]
pub(super) fn frames(_addr: usize) -> Vec<Frame> {
    Vec::new()
}
