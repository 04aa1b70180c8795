//! Scratch.
#[global_allocator]
static A: spanalloc::SpanAlloc = spanalloc::SpanAlloc;
fn main() {
    let mut v: Vec<Box<[u8]>> = Vec::new();
    for round in 0..20 {
        for i in 0..20000usize { v.push(vec![(i % 251) as u8; (i * 37) % 5000 + 1].into_boxed_slice()); }
        for b in v.iter() { let f = b[0]; assert!(b.iter().all(|&x| x == f)); }
        v.truncate(round * 100);
    }
    let hs: Vec<_> = (0..8).map(|t| std::thread::spawn(move || {
        let mut m = std::collections::HashMap::new();
        for i in 0..100000 { m.insert(i, format!("{t}-{i}")); if i % 3 == 0 { m.remove(&(i/2)); } }
        m.len()
    })).collect();
    for h in hs { println!("{}", h.join().unwrap()); }
    let big: Vec<Vec<u64>> = (0..50).map(|i| vec![i; 100_000 + i as usize * 1000]).collect();
    for (i, b) in big.iter().enumerate() { assert!(b.iter().all(|&x| x == i as u64)); }
    spanalloc::heap().check_invariants();
    println!("{:?}", spanalloc::heap().page_heap_stats());
}
