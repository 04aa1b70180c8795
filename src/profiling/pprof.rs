//! The pprof format: `profile.proto` encoded by hand (a few varints and length-delimited
//! fields: simpler than a code generator and its build step), the mappings from
//! `/proc/self/maps` with the build ids from the loaded objects' notes (Linux; a macOS
//! profile has no mappings), and the gzip container. See `lib.rs` for an overview.

use super::HeapProfile;
use super::symbolize;
use std::collections::HashMap;
use std::io::{self, Write};

/// For an unsymbolized profile: the frames `pprof` drops from every sample, with
/// everything they called, once it has symbolized them: the allocator's own functions and
/// its entry points, so that a sample's leaf is the code that asked for memory. An RE2
/// expression matched against whole function names. (A symbolized profile is cut here
/// instead, by source file: [`is_allocator`].)
const DROP_FRAMES: &str = concat!(
    "(spanalloc::.*|<spanalloc::.*|__rust_alloc.*|__rust_realloc|__rdl_.*|__rg_.*",
    "|alloc::alloc::.*|malloc|calloc|realloc|reallocarray|posix_memalign|aligned_alloc",
    "|memalign|valloc|pvalloc|operator new.*)"
);

/// Source directories whose functions are the allocator's: this crate's and the C
/// library's (the `preload/` crate beside it).
const OWN_SOURCES: [&str; 2] = [
    concat!(env!("CARGO_MANIFEST_DIR"), "/src/"),
    concat!(env!("CARGO_MANIFEST_DIR"), "/preload/src/"),
];

/// Whether a symbolized function belongs to the allocation layer that a sample's leaf
/// should be past: spanalloc itself, the standard library's `alloc` crate (`Vec`,
/// `String`, `Box` growing and allocating) and its allocator glue, or a C entry point.
fn is_allocator(f: &symbolize::Frame) -> bool {
    // The global allocator's shims, made by `#[global_allocator]` (filed under the line
    // that declares it).
    if ["__rust_alloc", "__rust_realloc", "__rdl_", "__rg_"]
        .iter()
        .any(|p| f.name.starts_with(p))
    {
        return true;
    }
    OWN_SOURCES.iter().any(|dir| f.file.starts_with(dir))
        || f.file.contains("/library/alloc/src/")
        || f.file.ends_with("/library/std/src/alloc.rs")
        || f.file.ends_with("/library/std/src/sys/alloc/unix.rs")
}

// profile.proto field numbers.
const PROFILE_SAMPLE_TYPE: u32 = 1;
const PROFILE_SAMPLE: u32 = 2;
const PROFILE_MAPPING: u32 = 3;
const PROFILE_LOCATION: u32 = 4;
const PROFILE_FUNCTION: u32 = 5;
const PROFILE_STRING_TABLE: u32 = 6;
const PROFILE_DROP_FRAMES: u32 = 7;
const PROFILE_TIME_NANOS: u32 = 9;
const PROFILE_DURATION_NANOS: u32 = 10;
const PROFILE_PERIOD_TYPE: u32 = 11;
const PROFILE_PERIOD: u32 = 12;
const PROFILE_COMMENT: u32 = 13;
const PROFILE_DEFAULT_SAMPLE_TYPE: u32 = 14;
const VALUE_TYPE_TYPE: u32 = 1;
const VALUE_TYPE_UNIT: u32 = 2;
const SAMPLE_LOCATION_ID: u32 = 1;
const SAMPLE_VALUE: u32 = 2;
const MAPPING_ID: u32 = 1;
const MAPPING_MEMORY_START: u32 = 2;
const MAPPING_MEMORY_LIMIT: u32 = 3;
const MAPPING_FILE_OFFSET: u32 = 4;
const MAPPING_FILENAME: u32 = 5;
const MAPPING_BUILD_ID: u32 = 6;
const MAPPING_HAS_FUNCTIONS: u32 = 7;
const MAPPING_HAS_FILENAMES: u32 = 8;
const MAPPING_HAS_LINE_NUMBERS: u32 = 9;
const MAPPING_HAS_INLINE_FRAMES: u32 = 10;
const LOCATION_ID: u32 = 1;
const LOCATION_MAPPING_ID: u32 = 2;
const LOCATION_ADDRESS: u32 = 3;
const LOCATION_LINE: u32 = 4;
const LINE_FUNCTION_ID: u32 = 1;
const LINE_LINE: u32 = 2;
const FUNCTION_ID: u32 = 1;
const FUNCTION_NAME: u32 = 2;
const FUNCTION_SYSTEM_NAME: u32 = 3;
const FUNCTION_FILENAME: u32 = 4;

const WIRE_VARINT: u32 = 0;
const WIRE_LEN: u32 = 2;

/// A protobuf message being written.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }

    /// A varint field (`uint64`, `int64`, `bool`); zero is the default and is left out.
    fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, WIRE_VARINT);
            self.varint(v);
        }
    }

    fn int(&mut self, field: u32, v: i64) {
        self.uint(field, v as u64);
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, WIRE_LEN);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn message(&mut self, field: u32, m: Message) {
        self.bytes(field, &m.0);
    }

    /// A packed repeated varint field.
    fn packed(&mut self, field: u32, values: impl IntoIterator<Item = u64>) {
        let mut inner = Message::default();
        for v in values {
            inner.varint(v);
        }
        self.bytes(field, &inner.0);
    }
}

/// The string table: index 0 is the empty string.
struct Strings {
    list: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Strings {
        Strings {
            list: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        }
    }

    fn id(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.list.len() as i64;
        self.list.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

/// An executable mapping of the process.
#[derive(Clone, Debug)]
// Made on Linux only (`mappings`).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct Mapping {
    start: u64,
    limit: u64,
    offset: u64,
    file: String,
    build_id: String,
    symbolized: bool,
}

/// The executable mappings in `/proc/self/maps`, with the build ids of the objects they
/// belong to. A mapping that holds an object's executable segment starts where the
/// segment does (with its file offset moved to match): the maps give the segment's first
/// OS page, and Go's `pprof` finds a position-independent binary's load address as the
/// mapping's start minus the segment's address.
#[cfg(target_os = "linux")]
fn mappings() -> Vec<Mapping> {
    let text = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let ids = build_ids();
    let mut out = Vec::new();
    for line in text.lines() {
        // start-end perms offset dev inode [path]
        let mut parts = line.split_ascii_whitespace();
        let (Some(range), Some(perms), Some(offset)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !perms.contains('x') {
            continue;
        }
        let (_dev, _inode) = (parts.next(), parts.next());
        let file: Vec<&str> = parts.collect();
        let file = file.join(" ");
        let file = file.strip_suffix(" (deleted)").unwrap_or(&file).to_owned();
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(limit), Ok(offset)) = (
            u64::from_str_radix(lo, 16),
            u64::from_str_radix(hi, 16),
            u64::from_str_radix(offset, 16),
        ) else {
            continue;
        };
        let page = crate::sys::os_page_size() as u64;
        let segment = ids
            .iter()
            .find(|(lo, hi, _)| *lo < limit && start < *hi && lo / page * page <= start);
        let build_id = segment.map(|(_, _, id)| id.clone()).unwrap_or_default();
        let seg_start = segment.map_or(start, |&(lo, _, _)| lo.max(start));
        let offset = offset + (seg_start - start);
        let start = seg_start;
        out.push(Mapping {
            start,
            limit,
            offset,
            file,
            build_id,
            symbolized: false,
        });
    }
    out
}

/// For every loaded object: its executable segments' address ranges and its GNU build id
/// (hex), read from its notes in memory.
#[cfg(target_os = "linux")]
fn build_ids() -> Vec<(u64, u64, String)> {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the vector `build_ids` passed; `info` describes a loaded object
        // whose program headers and note segments are mapped.
        unsafe {
            let out = &mut *data.cast::<Vec<(u64, u64, String)>>();
            let info = &*info;
            let phdrs = core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize);
            let base = info.dlpi_addr;
            let mut id = String::new();
            for ph in phdrs.iter().filter(|ph| ph.p_type == libc::PT_NOTE) {
                let notes = core::slice::from_raw_parts(
                    (base + ph.p_vaddr) as *const u8,
                    ph.p_memsz as usize,
                );
                if let Some(found) = gnu_build_id(notes) {
                    id = found;
                    break;
                }
            }
            for ph in phdrs
                .iter()
                .filter(|ph| ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0)
            {
                let lo = base + ph.p_vaddr;
                out.push((lo, lo + ph.p_memsz, id.clone()));
            }
        }
        0
    }
    let mut out: Vec<(u64, u64, String)> = Vec::new();
    // SAFETY: the callback matches the expected type and only uses `out`.
    unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut out).cast()) };
    out
}

/// The `NT_GNU_BUILD_ID` note among `notes` (a note segment), as hex.
#[cfg(target_os = "linux")]
fn gnu_build_id(mut notes: &[u8]) -> Option<String> {
    let word = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
    while notes.len() >= 12 {
        let (namesz, descsz, kind) = (word(notes), word(&notes[4..]), word(&notes[8..]));
        let name_end = 12 + namesz.next_multiple_of(4);
        let desc_end = name_end + descsz.next_multiple_of(4);
        if desc_end > notes.len() {
            return None;
        }
        if kind == 3 && namesz == 4 && &notes[12..16] == b"GNU\0" {
            let desc = &notes[name_end..name_end + descsz];
            return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        notes = &notes[desc_end..];
    }
    None
}

/// Elsewhere (macOS) no mappings: there is no `/proc/self/maps`, and a Mach-O image's
/// segments and UUID would be read through dyld (`_dyld_get_image_header`), not done yet.
/// The locations keep their addresses, symbolized in process with the `profiling`
/// feature; without it `pprof` has no binary to symbolize them from.
#[cfg(not(target_os = "linux"))]
fn mappings() -> Vec<Mapping> {
    Vec::new()
}

/// `profile` as a `profile.proto` message.
pub(super) fn encode(profile: &HeapProfile) -> Vec<u8> {
    let mut strings = Strings::new();
    let mut maps = mappings();
    let mut p = Message::default();

    for (kind, unit) in [
        ("alloc_objects", "count"),
        ("alloc_space", "bytes"),
        ("inuse_objects", "count"),
        ("inuse_space", "bytes"),
    ] {
        let mut vt = Message::default();
        vt.int(VALUE_TYPE_TYPE, strings.id(kind));
        vt.int(VALUE_TYPE_UNIT, strings.id(unit));
        p.message(PROFILE_SAMPLE_TYPE, vt);
    }

    // The functions at each distinct return address (a call: the instruction before it).
    let mut symbols: HashMap<usize, Vec<symbolize::Frame>> = HashMap::new();
    for s in &profile.stacks {
        for &ret in &s.frames {
            symbols
                .entry(ret)
                .or_insert_with(|| symbolize::frames(ret.saturating_sub(1)));
        }
    }
    let symbolized = symbols.values().any(|f| !f.is_empty());

    // One location per return address and number of innermost functions cut from it, in
    // order of first appearance. Each stack loses its innermost allocator frames, and the
    // inlined allocator functions of the first frame left.
    let mut location_of: HashMap<(usize, usize), u64> = HashMap::new();
    let mut locations_wanted: Vec<(usize, usize)> = Vec::new();
    let mut stacks: Vec<Vec<u64>> = Vec::new();
    for s in &profile.stacks {
        let mut ids = Vec::with_capacity(s.frames.len());
        let mut cutting = symbolized;
        for &ret in &s.frames {
            let lines = &symbols[&ret];
            let mut cut = 0;
            if cutting {
                // Whatever is inlined into an allocator function is the allocator's too: cut
                // through the outermost allocator function of the location (all of it when
                // that is the function the code belongs to).
                cut = lines.iter().rposition(is_allocator).map_or(0, |i| i + 1);
                if cut == lines.len() && !lines.is_empty() {
                    continue;
                }
                cutting = false;
            }
            let id = *location_of.entry((ret, cut)).or_insert_with(|| {
                locations_wanted.push((ret, cut));
                locations_wanted.len() as u64
            });
            ids.push(id);
        }
        stacks.push(ids);
    }

    for (s, ids) in profile.stacks.iter().zip(&stacks) {
        let mut m = Message::default();
        m.packed(SAMPLE_LOCATION_ID, ids.iter().copied());
        m.packed(
            SAMPLE_VALUE,
            [
                s.alloc_objects,
                s.alloc_bytes,
                s.inuse_objects,
                s.inuse_bytes,
            ]
            .map(|v| v.round().max(0.0) as i64 as u64),
        );
        p.message(PROFILE_SAMPLE, m);
    }

    let mut functions: HashMap<(String, String), u64> = HashMap::new();
    let mut function_list: Vec<(i64, i64, i64)> = Vec::new();
    let mut locations = Vec::new();
    for (i, &(ret, cut)) in locations_wanted.iter().enumerate() {
        // A return address: the call is the instruction before it.
        let pc = ret.saturating_sub(1);
        let mapping = maps
            .iter()
            .position(|m| m.start <= pc as u64 && (pc as u64) < m.limit);
        let frames = &symbols[&ret][cut..];
        if let (Some(m), false) = (mapping, frames.is_empty()) {
            maps[m].symbolized = true;
        }
        let mut loc = Message::default();
        loc.uint(LOCATION_ID, i as u64 + 1);
        loc.uint(LOCATION_MAPPING_ID, mapping.map_or(0, |m| m as u64 + 1));
        loc.uint(LOCATION_ADDRESS, pc as u64);
        for f in frames {
            let next = function_list.len() as u64 + 1;
            let key = (f.name.clone(), f.file.clone());
            let id = *functions.entry(key).or_insert_with(|| {
                function_list.push((
                    strings.id(&f.name),
                    strings.id(&f.system_name),
                    strings.id(&f.file),
                ));
                next
            });
            let mut line = Message::default();
            line.uint(LINE_FUNCTION_ID, id);
            line.int(LINE_LINE, i64::from(f.line));
            loc.message(LOCATION_LINE, line);
        }
        locations.push(loc);
    }

    for (i, m) in maps.iter().enumerate() {
        let mut mm = Message::default();
        mm.uint(MAPPING_ID, i as u64 + 1);
        mm.uint(MAPPING_MEMORY_START, m.start);
        mm.uint(MAPPING_MEMORY_LIMIT, m.limit);
        mm.uint(MAPPING_FILE_OFFSET, m.offset);
        mm.int(MAPPING_FILENAME, strings.id(&m.file));
        mm.int(MAPPING_BUILD_ID, strings.id(&m.build_id));
        for field in [
            MAPPING_HAS_FUNCTIONS,
            MAPPING_HAS_FILENAMES,
            MAPPING_HAS_LINE_NUMBERS,
            MAPPING_HAS_INLINE_FRAMES,
        ] {
            mm.uint(field, u64::from(m.symbolized));
        }
        p.message(PROFILE_MAPPING, mm);
    }
    for loc in locations {
        p.message(PROFILE_LOCATION, loc);
    }
    for (i, (name, system_name, file)) in function_list.into_iter().enumerate() {
        let mut f = Message::default();
        f.uint(FUNCTION_ID, i as u64 + 1);
        f.int(FUNCTION_NAME, name);
        f.int(FUNCTION_SYSTEM_NAME, system_name);
        f.int(FUNCTION_FILENAME, file);
        p.message(PROFILE_FUNCTION, f);
    }

    if !symbolized {
        p.int(PROFILE_DROP_FRAMES, strings.id(DROP_FRAMES));
    }
    let time = profile
        .time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    p.int(PROFILE_TIME_NANOS, time.as_nanos() as i64);
    p.int(PROFILE_DURATION_NANOS, profile.duration.as_nanos() as i64);
    let mut period = Message::default();
    period.int(VALUE_TYPE_TYPE, strings.id("space"));
    period.int(VALUE_TYPE_UNIT, strings.id("bytes"));
    p.message(PROFILE_PERIOD_TYPE, period);
    p.int(PROFILE_PERIOD, profile.mean as i64);
    let comment = format!(
        "spanalloc heap profile: mean {} bytes between samples, {} live samples, {} re-entered",
        profile.mean, profile.live_samples, profile.reentered
    );
    let comment = strings.id(&comment);
    p.packed(PROFILE_COMMENT, [comment as u64]);
    p.int(PROFILE_DEFAULT_SAMPLE_TYPE, strings.id("inuse_space"));
    // The string table last: every id above is in it by now.
    for s in &strings.list {
        p.bytes(PROFILE_STRING_TABLE, s.as_bytes());
    }
    p.0
}

/// Writes `data` to `out` as a gzip stream: compressed with the `profiling` feature.
#[cfg(feature = "profiling")]
pub(super) fn gzip(data: &[u8], out: impl Write) -> io::Result<()> {
    let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    gz.write_all(data)?;
    gz.finish()?.flush()
}

/// Writes `data` to `out` as a gzip stream of stored (uncompressed) deflate blocks: what
/// every gzip reader takes, with no compressor to depend on.
#[cfg(not(feature = "profiling"))]
pub(super) fn gzip(data: &[u8], mut out: impl Write) -> io::Result<()> {
    // ID1 ID2, deflate, no flags, no time, no extra flags, unknown OS.
    out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
    let mut chunks = data.chunks(0xffff).peekable();
    if chunks.peek().is_none() {
        out.write_all(&[1, 0, 0, 0xff, 0xff])?;
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let len = chunk.len() as u16;
        out.write_all(&[u8::from(last)])?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(&(!len).to_le_bytes())?;
        out.write_all(chunk)?;
    }
    out.write_all(&crc32(data).to_le_bytes())?;
    out.write_all(&(data.len() as u32).to_le_bytes())?;
    out.flush()
}

/// CRC-32 (IEEE), as gzip's trailer has it.
#[cfg(not(feature = "profiling"))]
fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, entry) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *entry = c;
    }
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields() {
        let mut m = Message::default();
        m.varint(0);
        m.varint(127);
        m.varint(128);
        m.varint(300);
        assert_eq!(m.0, [0, 127, 0x80, 1, 0xac, 2]);
        let mut m = Message::default();
        m.uint(1, 0);
        assert!(m.0.is_empty(), "defaults are left out");
        m.uint(2, 150);
        m.bytes(6, b"ab");
        assert_eq!(m.0, [0x10, 0x96, 1, 0x32, 2, b'a', b'b']);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_build_id_note() {
        let mut notes = Vec::new();
        // An unrelated note first, then the build id.
        for (name, kind, desc) in [
            (&b"ABC\0"[..], 1u32, &[9u8; 6][..]),
            (b"GNU\0", 3, &[0xab, 0xcd]),
        ] {
            notes.extend((name.len() as u32).to_ne_bytes());
            notes.extend((desc.len() as u32).to_ne_bytes());
            notes.extend(kind.to_ne_bytes());
            notes.extend(name);
            notes.extend(desc);
            while notes.len() % 4 != 0 {
                notes.push(0);
            }
        }
        assert_eq!(gnu_build_id(&notes).as_deref(), Some("abcd"));
        assert_eq!(gnu_build_id(&notes[..20]), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_executable_mappings() {
        let maps = mappings();
        let here = this_process_has_executable_mappings as *const () as usize as u64;
        let m = maps
            .iter()
            .find(|m| m.start <= here && here < m.limit)
            .unwrap();
        assert!(!m.file.is_empty());
        assert!(m.build_id.len() >= 16, "{m:?}");
    }

    #[cfg(not(feature = "profiling"))]
    #[test]
    fn crc32_of_a_known_string() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }
}
