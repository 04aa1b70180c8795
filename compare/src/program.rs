//! A realistic Rust program, for the `rust-program` workload: what a small service or data
//! tool does with `std`, all of it allocating through the global allocator.
//!
//! Four phases, timed together (one run is one operation of the table):
//!
//! 1. **Parse.** The main thread generates JSON lines (one object per line: numbers,
//!    strings with escapes, an array of tags, a nested object, an array of numbers) in
//!    chunks of [`CHUNK_LINES`] lines and hands the chunks round-robin to [`PARSERS`] parser
//!    threads through bounded `mpsc` channels. Each parser tokenizes its lines with a small
//!    hand-written JSON parser into a tree of small `String`s and `Vec`s, turns each tree
//!    into a record (name, tags, a byte payload, an index entry), drops the tree and sends
//!    the records in batches to a collector thread. The collector builds a
//!    `HashMap<String, Vec<u8>>` (name → payload), a tag count `HashMap<String, u64>` and a
//!    `BTreeMap<(u32, u64), String>` index (score, id → e-mail). Chunks are freed on the
//!    parser threads, records and their tags on the collector: frees on other threads.
//! 2. **Query and update the map.** Two threads look up random names (each key built with
//!    `format!`, as a request handler would) and send copies of some values back to the main
//!    thread, which drops them; then the main thread updates the map: values grown in place,
//!    replaced by new ones of another size, entries removed and new ones inserted.
//! 3. **Churn the BTreeMap.** Rounds of removing the lowest entries, inserting new ones and
//!    collecting range scans into `Vec<String>`s.
//! 4. **Pipeline.** Two producer threads format log lines in batches, a transformer thread
//!    splits them into lower-cased words and counts them per batch in a `HashMap`, and the
//!    main thread merges the counts: each batch is freed on the transformer, each summary on
//!    the main thread.
//!
//! Everything is seeded, and the program returns a checksum of what it computed that does
//! not depend on thread interleaving, so that every allocator can be seen to do the same
//! work. Its size scales with `scale` (the workload's iteration count): [`FULL_SCALE`] runs a
//! few seconds with glibc's malloc on 2 cores; `compare --quick` runs scale 1.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::workloads::XorShift;

/// The scale of a full `compare` run.
pub const FULL_SCALE: u64 = 10;
/// One line on the program, for tables.
pub const DESCRIPTION: &str = "a Rust program: JSON lines parsed on 3 threads into a HashMap<String, Vec<u8>> and a BTreeMap through channels, the map queried and updated, the BTreeMap churned, a 3-stage thread pipeline";

/// Records generated and parsed per unit of scale.
const RECORDS_PER_UNIT: u64 = 12_000;
/// Lines in a chunk handed to a parser thread.
pub const CHUNK_LINES: usize = 500;
/// Parser threads.
pub const PARSERS: usize = 3;
/// Map lookups per unit of scale (split between two threads).
const QUERIES_PER_UNIT: u64 = 40_000;
/// Map updates per unit of scale.
const UPDATES_PER_UNIT: u64 = 20_000;
/// BTreeMap churn rounds per unit of scale.
const BTREE_ROUNDS_PER_UNIT: u64 = 40;
/// Entries removed and inserted per BTreeMap round.
const BTREE_CHURN: usize = 500;
/// Log lines per unit of scale in the pipeline.
const LOG_LINES_PER_UNIT: u64 = 30_000;
/// Lines in a pipeline batch.
const LOG_BATCH: usize = 64;

/// What one run did: its time and its checksum.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// Wall time of the whole run.
    pub time: Duration,
    /// A checksum of the results, the same for every allocator at the same scale.
    pub check: u64,
}

/// Runs the program at `scale` (at least 1) and returns its time and checksum.
pub fn run(scale: u64) -> Outcome {
    let scale = scale.max(1);
    let start = Instant::now();
    let mut check = 0u64;
    let (mut map, mut index, tags) = parse_phase(scale * RECORDS_PER_UNIT, &mut check);
    let records = scale * RECORDS_PER_UNIT;
    query_phase(&map, records, scale * QUERIES_PER_UNIT, &mut check);
    update_phase(&mut map, records, scale * UPDATES_PER_UNIT, &mut check);
    btree_phase(
        &mut index,
        records,
        scale * BTREE_ROUNDS_PER_UNIT,
        &mut check,
    );
    pipeline_phase(scale * LOG_LINES_PER_UNIT, &tags, &mut check);
    for (k, v) in &map {
        check = check.wrapping_add(fnv(k.as_bytes()) ^ v.len() as u64);
    }
    drop((map, index, tags));
    Outcome {
        time: start.elapsed(),
        check,
    }
}

/// FNV-1a: a small hash for checksums.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The unique name of record `id`.
fn name_of(id: u64) -> String {
    let h = fnv(&id.to_le_bytes());
    let letters: String = (0..4)
        .map(|i| char::from(b'a' + ((h >> (8 * i)) % 26) as u8))
        .collect();
    format!("user-{id:x}-{letters}")
}

// ---------------------------------------------------------------------------------------
// Phase 1: generate, parse, collect.

const TAGS: [&str; 12] = [
    "red", "green", "blue", "admin", "beta", "mobile", "desktop", "eu", "us", "trial", "paid",
    "legacy",
];
const PLANS: [&str; 4] = ["free", "pro", "team", "enterprise"];
const WORDS: [&str; 16] = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "magna",
];

/// Appends the JSON line of record `id` to `out`.
fn write_line(out: &mut String, id: u64, rng: &mut XorShift) {
    let name = name_of(id);
    let _ = write!(
        out,
        "{{\"id\":{id},\"name\":\"{name}\",\"email\":\"{name}@example.org\",\"active\":{},\"score\":{}.{},\"tags\":[",
        rng.below(4) != 0,
        rng.below(1000),
        rng.below(100)
    );
    for t in 0..rng.below(5) {
        if t > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{}\"", TAGS[rng.below(TAGS.len())]);
    }
    let _ = write!(
        out,
        "],\"attrs\":{{\"plan\":\"{}\",\"region\":\"r-{}\",\"referrer\":null}},\"bio\":\"",
        PLANS[rng.below(PLANS.len())],
        rng.below(20)
    );
    for w in 0..rng.below(24) {
        if w > 0 {
            out.push_str(if rng.below(8) == 0 { "\\n" } else { " " });
        }
        let word = WORDS[rng.below(WORDS.len())];
        if rng.below(16) == 0 {
            let _ = write!(out, "\\\"{word}\\\"");
        } else {
            out.push_str(word);
        }
    }
    out.push_str("\",\"history\":[");
    for h in 0..rng.below(32) {
        if h > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}", rng.below(100_000));
    }
    out.push_str("]}\n");
}

/// A parsed JSON value.
#[derive(Debug)]
enum Value {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Value>),
    Obj(Vec<(String, Value)>),
}

impl Value {
    fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    fn num(&self) -> Option<f64> {
        match self {
            Value::Num(n) => Some(*n),
            _ => None,
        }
    }
}

/// A small JSON parser over one line (the subset the generator writes, plus the usual
/// escapes).
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn parse(line: &str) -> Option<Value> {
        let mut p = Parser {
            s: line.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        (p.i == p.s.len()).then_some(v)
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        self.ws();
        (self.peek()? == b).then(|| self.i += 1)
    }

    fn literal(&mut self, word: &str, v: Value) -> Option<Value> {
        self.s[self.i..]
            .starts_with(word.as_bytes())
            .then(|| self.i += word.len())?;
        Some(v)
    }

    fn value(&mut self) -> Option<Value> {
        self.ws();
        match self.peek()? {
            b'{' => self.object(),
            b'[' => self.array(),
            b'"' => self.string().map(Value::Str),
            b't' => self.literal("true", Value::Bool(true)),
            b'f' => self.literal("false", Value::Bool(false)),
            b'n' => self.literal("null", Value::Null),
            _ => self.number(),
        }
    }

    fn object(&mut self) -> Option<Value> {
        self.eat(b'{')?;
        let mut fields = Vec::new();
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(Value::Obj(fields));
        }
        loop {
            self.ws();
            let k = self.string()?;
            self.eat(b':')?;
            fields.push((k, self.value()?));
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(Value::Obj(fields));
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self) -> Option<Value> {
        self.eat(b'[')?;
        let mut items = Vec::new();
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            return Some(Value::Arr(items));
        }
        loop {
            items.push(self.value()?);
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(Value::Arr(items));
                }
                _ => return None,
            }
        }
    }

    /// A string; the text is built byte by byte, growing as it goes, as parsers do.
    fn string(&mut self) -> Option<String> {
        if self.peek()? != b'"' {
            return None;
        }
        self.i += 1;
        let mut out = String::new();
        loop {
            let start = self.i;
            while self.i < self.s.len() && self.s[self.i] != b'"' && self.s[self.i] != b'\\' {
                self.i += 1;
            }
            out.push_str(std::str::from_utf8(&self.s[start..self.i]).ok()?);
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(out);
                }
                _ => {
                    let c = *self.s.get(self.i + 1)?;
                    self.i += 2;
                    out.push(match c {
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'u' => {
                            let hex = std::str::from_utf8(self.s.get(self.i..self.i + 4)?).ok()?;
                            self.i += 4;
                            char::from_u32(u32::from_str_radix(hex, 16).ok()?)?
                        }
                        _ => return None,
                    });
                }
            }
        }
    }

    fn number(&mut self) -> Option<Value> {
        let start = self.i;
        while self.i < self.s.len()
            && matches!(
                self.s[self.i],
                b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
            )
        {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).ok()?;
        text.parse().ok().map(Value::Num)
    }
}

/// What a parser thread makes of one line.
struct Record {
    id: u64,
    name: String,
    email: String,
    score: u32,
    tags: Vec<String>,
    payload: Vec<u8>,
}

impl Record {
    fn from_value(v: &Value) -> Option<Record> {
        let tags = match v.get("tags")? {
            Value::Arr(items) => items
                .iter()
                .map(|t| t.str().map(str::to_owned))
                .collect::<Option<Vec<String>>>()?,
            _ => return None,
        };
        let mut payload = Vec::new();
        let attrs = v.get("attrs")?;
        for key in ["plan", "region"] {
            payload.extend_from_slice(attrs.get(key)?.str()?.as_bytes());
            payload.push(0);
        }
        if let Value::Arr(items) = v.get("history")? {
            for h in items {
                payload.extend_from_slice(&(h.num()? as u32).to_le_bytes());
            }
        }
        payload.extend_from_slice(v.get("bio")?.str()?.as_bytes());
        if matches!(v.get("active")?, Value::Bool(true)) {
            payload.push(1);
        }
        Some(Record {
            id: v.get("id")?.num()? as u64,
            name: v.get("name")?.str()?.to_owned(),
            email: v.get("email")?.str()?.to_owned(),
            score: v.get("score")?.num()? as u32,
            tags,
            payload,
        })
    }
}

type Map = HashMap<String, Vec<u8>>;
type Index = BTreeMap<(u32, u64), String>;

/// Phase 1: `records` lines generated, parsed on [`PARSERS`] threads, collected on another.
fn parse_phase(records: u64, check: &mut u64) -> (Map, Index, HashMap<String, u64>) {
    let (batch_tx, batch_rx) = mpsc::channel::<Vec<Record>>();
    let mut chunk_txs = Vec::new();
    let mut parsers = Vec::new();
    for _ in 0..PARSERS {
        let (tx, rx) = mpsc::sync_channel::<String>(4);
        chunk_txs.push(tx);
        let batch_tx = batch_tx.clone();
        parsers.push(thread::spawn(move || {
            for chunk in rx {
                let mut batch = Vec::with_capacity(CHUNK_LINES);
                for line in chunk.lines() {
                    let v = Parser::parse(line).expect("the generator writes valid JSON");
                    batch.push(Record::from_value(&v).expect("the generator writes records"));
                }
                if batch_tx.send(batch).is_err() {
                    return;
                }
            }
        }));
    }
    drop(batch_tx);
    let collector = thread::spawn(move || {
        let mut map = Map::new();
        let mut index = Index::new();
        let mut tags: HashMap<String, u64> = HashMap::new();
        let mut sum = 0u64;
        for batch in batch_rx {
            for r in batch {
                sum = sum.wrapping_add(r.id ^ r.payload.len() as u64);
                for t in r.tags {
                    *tags.entry(t).or_insert(0) += 1;
                }
                index.insert((r.score, r.id), r.email);
                map.insert(r.name, r.payload);
            }
        }
        (map, index, tags, sum)
    });
    let mut rng = XorShift::new(7);
    let mut id = 0;
    let mut next = 0;
    while id < records {
        let mut chunk = String::new();
        for _ in 0..CHUNK_LINES {
            if id == records {
                break;
            }
            write_line(&mut chunk, id, &mut rng);
            id += 1;
        }
        chunk_txs[next]
            .send(chunk)
            .expect("parser threads run until their channel closes");
        next = (next + 1) % PARSERS;
    }
    drop(chunk_txs);
    for p in parsers {
        p.join().expect("parser thread");
    }
    let (map, index, tags, sum) = collector.join().expect("collector thread");
    assert_eq!(map.len() as u64, records, "every record collected");
    *check = check.wrapping_add(sum);
    for (t, n) in &tags {
        *check = check.wrapping_add(fnv(t.as_bytes()).wrapping_mul(*n));
    }
    (map, index, tags)
}

// ---------------------------------------------------------------------------------------
// Phase 2: query and update the map.

/// `queries` lookups of random names on two threads; some values are copied and sent to
/// the main thread as a response would be.
fn query_phase(map: &Map, records: u64, queries: u64, check: &mut u64) {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let sums: Vec<u64> = thread::scope(|s| {
        let handles: Vec<_> = (0..2u64)
            .map(|t| {
                let tx = tx.clone();
                s.spawn(move || {
                    let mut rng = XorShift::new(20 + t);
                    let mut sum = 0u64;
                    for q in 0..queries / 2 {
                        let key = name_of(rng.below(records as usize) as u64);
                        if let Some(v) = map.get(&key) {
                            sum = sum.wrapping_add(v.len() as u64);
                            if q % 4 == 0 {
                                let _ = tx.send(v.clone());
                            }
                        }
                    }
                    sum
                })
            })
            .collect();
        drop(tx);
        let mut got = 0u64;
        for v in rx {
            got = got.wrapping_add(fnv(&v));
        }
        let mut sums: Vec<u64> = handles
            .into_iter()
            .map(|h| h.join().expect("query thread"))
            .collect();
        sums.push(got);
        sums
    });
    for s in sums {
        *check = check.wrapping_add(s);
    }
}

/// `updates` updates of random entries on the main thread.
fn update_phase(map: &mut Map, records: u64, updates: u64, check: &mut u64) {
    let mut rng = XorShift::new(30);
    for u in 0..updates {
        let id = rng.below(records as usize) as u64;
        let key = name_of(id);
        match rng.below(8) {
            // Grow in place (or shrink when large), as a buffer being appended to.
            0..=3 => {
                if let Some(v) = map.get_mut(&key) {
                    if v.len() > 1024 {
                        v.truncate(16);
                        v.shrink_to_fit();
                    } else {
                        let n = 1 + rng.below(64);
                        v.extend((0..n).map(|i| (u as usize + i) as u8));
                    }
                }
            }
            // Replace by a new value of another size.
            4..=6 => {
                let n = 8 + rng.log_uniform(3, 10);
                map.insert(key, vec![(u % 251) as u8; n]);
            }
            // Remove, and insert a new entry under another name.
            _ => {
                if let Some(old) = map.remove(&key) {
                    let new_key = format!("{key}-v{u}");
                    map.insert(new_key, old[..old.len() / 2].to_vec());
                }
            }
        }
    }
    *check = check.wrapping_add(map.len() as u64);
}

// ---------------------------------------------------------------------------------------
// Phase 3: churn the BTreeMap.

fn btree_phase(index: &mut Index, records: u64, rounds: u64, check: &mut u64) {
    let mut rng = XorShift::new(40);
    let mut next_id = records;
    for _ in 0..rounds {
        for _ in 0..BTREE_CHURN {
            if let Some((_, v)) = index.pop_first() {
                *check = check.wrapping_add(v.len() as u64);
            }
        }
        for _ in 0..BTREE_CHURN {
            let score = rng.below(1000) as u32;
            index.insert(
                (score, next_id),
                format!("{}@example.org", name_of(next_id)),
            );
            next_id += 1;
        }
        for _ in 0..8 {
            let lo = rng.below(1000) as u32;
            let found: Vec<String> = index
                .range((lo, 0)..(lo + 5, 0))
                .take(64)
                .map(|(_, v)| v.clone())
                .collect();
            *check = check.wrapping_add(found.iter().map(|s| fnv(s.as_bytes())).sum::<u64>());
            black_box(found);
        }
    }
    *check = check.wrapping_add(index.len() as u64);
}

// ---------------------------------------------------------------------------------------
// Phase 4: a three-stage pipeline.

fn pipeline_phase(lines: u64, tags: &HashMap<String, u64>, check: &mut u64) {
    let mut tag_names: Vec<&str> = tags.keys().map(String::as_str).collect();
    tag_names.sort_unstable();
    let (line_tx, line_rx) = mpsc::sync_channel::<Vec<String>>(8);
    let (sum_tx, sum_rx) = mpsc::sync_channel::<Vec<(String, u32)>>(8);
    let mut totals: HashMap<String, u64> = HashMap::new();
    thread::scope(|s| {
        for p in 0..2u64 {
            let line_tx = line_tx.clone();
            let tag_names = &tag_names;
            s.spawn(move || {
                let mut rng = XorShift::new(50 + p);
                let mut batch = Vec::with_capacity(LOG_BATCH);
                for l in 0..lines / 2 {
                    let mut line = format!(
                        "{} INFO request id={} user={} tag={} took {}ms:",
                        1_700_000_000 + l,
                        rng.next_u64() % 1_000_000,
                        name_of(rng.below(1_000) as u64),
                        tag_names[rng.below(tag_names.len())],
                        rng.below(500)
                    );
                    for _ in 0..rng.below(12) {
                        line.push(' ');
                        line.push_str(WORDS[rng.below(WORDS.len())]);
                    }
                    batch.push(line);
                    if batch.len() == LOG_BATCH {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(LOG_BATCH));
                        line_tx.send(full).expect("transformer runs");
                    }
                }
                if !batch.is_empty() {
                    line_tx.send(batch).expect("transformer runs");
                }
            });
        }
        drop(line_tx);
        s.spawn(move || {
            for batch in line_rx {
                let mut counts: HashMap<String, u32> = HashMap::new();
                for line in &batch {
                    let words: Vec<String> = line
                        .split_whitespace()
                        .map(str::to_ascii_lowercase)
                        .collect();
                    for w in words {
                        if w.len() > 3 && !w.starts_with(|c: char| c.is_ascii_digit()) {
                            *counts.entry(w).or_insert(0) += 1;
                        }
                    }
                }
                drop(batch);
                let summary: Vec<(String, u32)> = counts.into_iter().collect();
                sum_tx.send(summary).expect("the main thread merges");
            }
        });
        for summary in sum_rx {
            for (w, n) in summary {
                *totals.entry(w).or_insert(0) += u64::from(n);
            }
        }
    });
    for (w, n) in &totals {
        *check = check.wrapping_add(fnv(w.as_bytes()).wrapping_mul(*n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_reads_what_the_generator_writes() {
        let mut rng = XorShift::new(1);
        let mut text = String::new();
        for id in 0..200 {
            write_line(&mut text, id, &mut rng);
        }
        for (id, line) in text.lines().enumerate() {
            let v = Parser::parse(line).expect("valid");
            let r = Record::from_value(&v).expect("a record");
            assert_eq!(r.id, id as u64);
            assert_eq!(r.name, name_of(id as u64));
        }
        let v = Parser::parse(r#"{"a":"x\"y\\z\n\u00e9","b":[1,-2.5e1,true,null,{}],"c":[]}"#)
            .expect("valid");
        assert_eq!(v.get("a").and_then(Value::str), Some("x\"y\\z\né"));
        assert!(Parser::parse(r#"{"a":1"#).is_none());
    }

    #[test]
    fn checksum_does_not_depend_on_threads() {
        let a = run(1).check;
        let b = run(1).check;
        assert_eq!(a, b);
    }
}
