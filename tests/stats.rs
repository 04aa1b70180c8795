//! `spanalloc::stats()`: its parts add up to what is mapped, and its bytes in use follow
//! what the program holds, counted at class size; its table lists the classes in use, and
//! its JSON form parses and carries the same numbers.

#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;

use spanalloc::internals::size_class::class_for;
use spanalloc::internals::span::GUARD_PAGES;
use std::alloc::{Layout, alloc, dealloc};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

mod common;

/// How long a child process running one test alone may take.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// The tests compare snapshots of the one global heap: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A snapshot cannot look into other live threads' caches: their free objects count as in
/// use. The test harness's own threads allocate and free while other tests finish, so the
/// exact identities are checked in a child process that runs this test alone.
#[test]
fn stats_identities_hold() {
    common::child_test("stats_identities_hold", CHILD_TIMEOUT, identities);
}

fn identities() {
    let _serial = serial();
    let sizes: Vec<usize> = (0..3000).map(|i| 1 + (i * 97) % 20_000).collect();
    let large = [40_000usize, 100_000, 1 << 20, (3 << 20) + 5];
    let mut held = Vec::with_capacity(sizes.len() + large.len());
    spanalloc::flush_thread_cache();
    let before = spanalloc::stats();
    assert_eq!(before.parts(), before.mapped, "{before:#?}");

    let mut expected = 0;
    for &s in sizes.iter().chain(large.iter()) {
        let layout = Layout::from_size_align(s, 8).unwrap();
        // SAFETY: non-zero layout.
        let p = unsafe { alloc(layout) };
        assert!(!p.is_null());
        held.push((p, layout));
        expected += match class_for(s, 8) {
            Some(class) => class.size(),
            // A large object's span: its pages, and its guard page in the hardened build.
            None => s.div_ceil(8192) * 8192 + GUARD_PAGES.bytes(),
        };
    }
    spanalloc::flush_thread_cache();
    let during = spanalloc::stats();
    assert_eq!(during.parts(), during.mapped, "{during:#?}");
    assert_eq!(during.thread_cache, 0, "flushed");
    assert_eq!(
        during.in_use - before.in_use,
        expected,
        "bytes in use follow what the test holds, at class size"
    );
    let n = (sizes.len() + large.len()) as u64;
    assert_eq!(
        (
            during.allocations - before.allocations,
            during.frees - before.frees
        ),
        (n, 0),
        "each allocation counted once (this thread's, folded in at its flush)"
    );
    // The peak is a high-water mark of the bytes in spans in use.
    let in_spans =
        |st: &spanalloc::stats::Stats| st.in_use + st.thread_cache + st.central + st.span_overhead;
    assert!(during.peak >= in_spans(&during), "{during:#?}");
    let per_class: usize = during
        .classes
        .iter()
        .map(|c| c.objects_in_use * c.object_size)
        .sum();
    assert_eq!(
        per_class + during.large_in_use,
        during.in_use,
        "classes add up"
    );
    assert!(during.metadata > 0);

    // Unflushed: the calling thread's own cache is still exact.
    let (p, layout) = held.pop().unwrap();
    // SAFETY: allocated above with `layout`, freed once.
    unsafe { dealloc(p, layout) };
    let small = Layout::from_size_align(100, 8).unwrap();
    // SAFETY: non-zero layout.
    let q = std::hint::black_box(unsafe { alloc(small) });
    let unflushed = spanalloc::stats();
    assert_eq!(unflushed.parts(), unflushed.mapped, "{unflushed:#?}");
    assert_eq!(
        (
            unflushed.allocations - during.allocations,
            unflushed.frees - during.frees
        ),
        (1, 1),
        "the calling thread's own counts, not yet folded in, are in its snapshot"
    );
    assert_eq!(
        unflushed.in_use - before.in_use,
        expected - (3 << 20) - 8192 - GUARD_PAGES.bytes() + class_for(100, 8).unwrap().size()
    );

    // A `realloc` that moves counts as an allocation and a free; one in place as neither.
    let counts = |st: &spanalloc::stats::Stats| (st.allocations, st.frees);
    let c0 = counts(&spanalloc::stats());
    // SAFETY: `q` is live with `small`; 100 000 bytes is a large object: it moves.
    let q = unsafe { std::alloc::realloc(q, small, 100_000) };
    assert!(!q.is_null());
    let c1 = counts(&spanalloc::stats());
    assert_eq!((c1.0 - c0.0, c1.1 - c0.1), (1, 1), "moved");
    let big = Layout::from_size_align(100_000, 8).unwrap();
    // SAFETY: `q` is live with `big`; shrinking a large object by a few bytes stays.
    let q = unsafe { std::alloc::realloc(q, big, 99_990) };
    let c2 = counts(&spanalloc::stats());
    assert_eq!(c2, c1, "in place");
    let small = Layout::from_size_align(99_990, 8).unwrap();

    // SAFETY: allocated above, freed once.
    unsafe { dealloc(q, small) };
    for (p, layout) in held.drain(..) {
        // SAFETY: allocated above with `layout`, freed once.
        unsafe { dealloc(p, layout) };
    }
    spanalloc::flush_thread_cache();
    let after = spanalloc::stats();
    assert_eq!(after.parts(), after.mapped, "{after:#?}");
    assert_eq!(
        after.in_use, before.in_use,
        "everything freed is no longer in use"
    );
    assert_eq!(
        (
            after.allocations - before.allocations,
            after.frees - before.frees
        ),
        (n + 2, n + 2),
        "every allocation and free counted once"
    );
    assert!(after.peak >= during.peak, "a peak never comes down");
}

/// Holds `n` objects of `size` bytes until dropped.
struct Held {
    ptrs: Vec<*mut u8>,
    layout: Layout,
}

impl Held {
    fn new(size: usize, n: usize) -> Held {
        let layout = Layout::from_size_align(size, 8).unwrap();
        let ptrs = (0..n)
            .map(|_| {
                // SAFETY: non-zero layout.
                let p = unsafe { alloc(layout) };
                assert!(!p.is_null());
                p
            })
            .collect();
        Held { ptrs, layout }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for &p in &self.ptrs {
            // SAFETY: allocated in `new` with `layout`, freed once.
            unsafe { dealloc(p, self.layout) };
        }
    }
}

#[test]
fn display_lists_a_class_in_use() {
    let _serial = serial();
    let class = class_for(3000, 8).unwrap();
    let held = Held::new(3000, 40);
    spanalloc::flush_thread_cache();
    let st = spanalloc::stats();
    let text = st.to_string();
    drop(held);
    for label in [
        "in use",
        "thread cache",
        "central",
        "page heap free",
        "released",
        "mapped",
        "metadata",
    ] {
        assert!(text.contains(label), "no {label:?} line:\n{text}");
    }
    assert!(
        text.contains("MiB") || text.contains("KiB"),
        "sizes in binary units:\n{text}"
    );
    // The class rows: class, size, spans, in use, free, other-owned spans.
    let rows: Vec<Vec<usize>> = text
        .lines()
        .filter_map(|l| {
            let w: Vec<usize> = l
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            (w.len() == 5).then_some(w)
        })
        .collect();
    let row = rows
        .iter()
        .find(|w| w[0] == class.index())
        .unwrap_or_else(|| panic!("no row for class {}:\n{text}", class.index()));
    let c = &st.classes[class.index()];
    assert_eq!(row[1], class.size());
    assert_eq!(row[2..], [c.spans, c.objects_in_use, c.free_objects]);
    assert!(row[3] >= 40, "the 40 objects held are in use:\n{text}");
    assert_eq!(
        rows.len(),
        st.classes.iter().filter(|c| c.spans > 0).count(),
        "one row per class with spans, and only those:\n{text}"
    );
}

#[test]
fn json_parses_and_matches() {
    let _serial = serial();
    let held = Held::new(200, 100);
    let st = spanalloc::stats();
    let json = st.to_json();
    drop(held);
    let value = json::parse(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let top = value.object();
    let expect: [(&str, u64); 13] = [
        ("in_use", st.in_use as u64),
        ("large_in_use", st.large_in_use as u64),
        ("thread_cache", st.thread_cache as u64),
        ("central", st.central as u64),
        ("span_overhead", st.span_overhead as u64),
        ("page_heap_free", st.page_heap_free as u64),
        ("released", st.released as u64),
        ("mapped", st.mapped as u64),
        ("metadata", st.metadata as u64),
        ("released_total", st.released_total as u64),
        ("peak", st.peak as u64),
        ("allocations", st.allocations),
        ("frees", st.frees),
    ];
    let names: Vec<&str> = top.iter().map(|(k, _)| k.as_str()).collect();
    let mut wanted: Vec<&str> = expect.iter().map(|(k, _)| *k).collect();
    wanted.push("classes");
    assert_eq!(names, wanted, "every field once, in order");
    for (name, v) in expect {
        assert_eq!(value.get(name).number(), v, "{name}");
    }
    let classes = value.get("classes").array();
    assert_eq!(classes.len(), st.classes.len() - 1, "every class but 0");
    for (i, c) in classes.iter().enumerate() {
        let s = &st.classes[i + 1];
        assert_eq!(c.get("class").number(), i as u64 + 1);
        assert_eq!(c.get("object_size").number(), s.object_size as u64);
        assert_eq!(c.get("spans").number(), s.spans as u64);
        assert_eq!(c.get("objects_in_use").number(), s.objects_in_use as u64);
        assert_eq!(c.get("free_objects").number(), s.free_objects as u64);
    }
    let class = class_for(200, 8).unwrap();
    assert!(classes[class.index() - 1].get("objects_in_use").number() >= 100);

    // The checker itself rejects what is not JSON.
    for bad in [
        "",
        "{",
        "{\"a\":1,}",
        "{\"a\" 1}",
        "[1 2]",
        "01",
        "{\"a\":1}x",
        "{a:1}",
    ] {
        assert!(json::parse(bad).is_err(), "{bad:?} accepted");
    }
    assert!(json::parse(" {\"a\": [1, {\"b\": 0}], \"c\": \"d\"} ").is_ok());
}

/// A small strict JSON reader: objects, arrays, strings without escapes, unsigned
/// integers, `true`, `false`, `null`. Enough to check what `Stats::to_json` writes.
mod json {
    #[derive(Debug)]
    pub enum Value {
        Number(u64),
        Str(#[allow(dead_code)] String),
        Literal(#[allow(dead_code)] &'static str),
        Array(Vec<Value>),
        Object(Vec<(String, Value)>),
    }

    impl Value {
        pub fn object(&self) -> &[(String, Value)] {
            match self {
                Value::Object(fields) => fields,
                other => panic!("not an object: {other:?}"),
            }
        }

        pub fn get(&self, name: &str) -> &Value {
            let found: Vec<&Value> = self
                .object()
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v)
                .collect();
            assert_eq!(found.len(), 1, "{name:?} appears once");
            found[0]
        }

        pub fn array(&self) -> &[Value] {
            match self {
                Value::Array(items) => items,
                other => panic!("not an array: {other:?}"),
            }
        }

        pub fn number(&self) -> u64 {
            match self {
                Value::Number(n) => *n,
                other => panic!("not a number: {other:?}"),
            }
        }
    }

    pub fn parse(text: &str) -> Result<Value, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing bytes at {}", p.i));
        }
        Ok(v)
    }

    struct Parser<'a> {
        s: &'a [u8],
        i: usize,
    }

    impl Parser<'_> {
        fn ws(&mut self) {
            while matches!(self.s.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.i += 1;
            }
        }

        fn eat(&mut self, b: u8) -> Result<(), String> {
            self.ws();
            if self.s.get(self.i) == Some(&b) {
                self.i += 1;
                Ok(())
            } else {
                Err(format!("expected {:?} at {}", b as char, self.i))
            }
        }

        fn value(&mut self) -> Result<Value, String> {
            self.ws();
            match self.s.get(self.i) {
                Some(b'{') => self.object(),
                Some(b'[') => self.array(),
                Some(b'"') => self.string().map(Value::Str),
                Some(b'0'..=b'9') => self.number(),
                _ => {
                    for lit in ["true", "false", "null"] {
                        if self.s[self.i..].starts_with(lit.as_bytes()) {
                            self.i += lit.len();
                            return Ok(Value::Literal(lit));
                        }
                    }
                    Err(format!("no value at {}", self.i))
                }
            }
        }

        fn object(&mut self) -> Result<Value, String> {
            self.eat(b'{')?;
            let mut fields = Vec::new();
            self.ws();
            if self.s.get(self.i) == Some(&b'}') {
                self.i += 1;
                return Ok(Value::Object(fields));
            }
            loop {
                self.ws();
                let key = self.string()?;
                self.eat(b':')?;
                fields.push((key, self.value()?));
                self.ws();
                match self.s.get(self.i) {
                    Some(b',') => self.i += 1,
                    Some(b'}') => {
                        self.i += 1;
                        return Ok(Value::Object(fields));
                    }
                    _ => return Err(format!("expected ',' or '}}' at {}", self.i)),
                }
            }
        }

        fn array(&mut self) -> Result<Value, String> {
            self.eat(b'[')?;
            let mut items = Vec::new();
            self.ws();
            if self.s.get(self.i) == Some(&b']') {
                self.i += 1;
                return Ok(Value::Array(items));
            }
            loop {
                items.push(self.value()?);
                self.ws();
                match self.s.get(self.i) {
                    Some(b',') => self.i += 1,
                    Some(b']') => {
                        self.i += 1;
                        return Ok(Value::Array(items));
                    }
                    _ => return Err(format!("expected ',' or ']' at {}", self.i)),
                }
            }
        }

        fn string(&mut self) -> Result<String, String> {
            if self.s.get(self.i) != Some(&b'"') {
                return Err(format!("expected a string at {}", self.i));
            }
            let start = self.i + 1;
            let len = self.s[start..]
                .iter()
                .position(|&b| b == b'"')
                .ok_or("unterminated string")?;
            let body = &self.s[start..start + len];
            if body.iter().any(|&b| b == b'\\' || b < 0x20) {
                return Err(format!("escape or control byte in string at {start}"));
            }
            self.i = start + len + 1;
            String::from_utf8(body.to_vec()).map_err(|e| e.to_string())
        }

        fn number(&mut self) -> Result<Value, String> {
            let start = self.i;
            while matches!(self.s.get(self.i), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            let digits = &self.s[start..self.i];
            if digits.len() > 1 && digits[0] == b'0' {
                return Err(format!("leading zero at {start}"));
            }
            if matches!(self.s.get(self.i), Some(b'.' | b'e' | b'E')) {
                return Err(format!("not an integer at {start}"));
            }
            std::str::from_utf8(digits)
                .unwrap()
                .parse()
                .map(Value::Number)
                .map_err(|e| format!("{e} at {start}"))
        }
    }
}

/// With every allocation sampled (`SPANALLOC_PROFILE=1`), the objects the allocator pops for
/// a request and then serves as sampled ones instead (the fast path's, a moved `realloc`'s)
/// are not counted as frees: the counts stay the program's own. In a child process, alone.
#[test]
fn counts_hold_when_every_allocation_is_sampled() {
    common::child_test_in(
        "counts_hold_when_every_allocation_is_sampled",
        CHILD_TIMEOUT,
        &[("SPANALLOC_PROFILE", "1")],
        sampled_counts,
    );
}

fn sampled_counts() {
    let _serial = serial();
    let counts = || {
        let st = spanalloc::stats();
        (st.allocations, st.frees)
    };
    let small = Layout::from_size_align(48, 8).unwrap();
    let grown = Layout::from_size_align(900, 8).unwrap();
    let mut held = [std::ptr::null_mut::<u8>(); 32];
    let before = counts();
    for slot in held.iter_mut() {
        // SAFETY: non-zero layout.
        *slot = unsafe { alloc(small) };
        assert!(!slot.is_null());
    }
    // Moved by `realloc` into another class: each move takes an object from the cache (its
    // bin filled with a batch on the first), then serves a sampled one instead.
    for slot in held.iter_mut() {
        // SAFETY: live with `small`.
        *slot = unsafe { std::alloc::realloc(*slot, small, 900) };
        assert!(!slot.is_null());
    }
    // The bin of 900 bytes holds objects now: the fast path pops one, then samples.
    // SAFETY: non-zero layout.
    let popped: [*mut u8; 16] = core::array::from_fn(|_| unsafe { alloc(grown) });
    for &p in held.iter().chain(&popped) {
        // SAFETY: live with `grown`, freed once.
        unsafe { dealloc(p, grown) };
    }
    let after = counts();
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (80, 80),
        "48 allocations, 32 moves (an allocation and a free each), 48 frees"
    );
}

/// `release_free_memory` hands the calling thread's cached objects back first (then gives
/// the free pages to the OS): its cache is empty after it.
#[test]
fn release_free_memory_empties_the_calling_threads_cache() {
    let _serial = serial();
    drop(Held::new(64, 100));
    let freed = 100 * class_for(64, 8).unwrap().size();
    assert!(
        spanalloc::stats().thread_cache >= freed,
        "the freed objects wait in the cache"
    );
    spanalloc::release_free_memory();
    // (The figure also counts the orphan cache of threads past their exit flush, which this
    // call leaves alone: usually empty, never this thread's 100 objects.)
    assert!(spanalloc::stats().thread_cache < freed);
}
