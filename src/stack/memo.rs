//! A thread's last walk, replayed while its stack holds the same words. See `stack.rs`.
//!
//! A walk's frames are a function of the registers it starts from, the unwind rules of the
//! code it steps through, and the stack words it reads (each frame's return address, and
//! the saved `rbp` where a frame saved it). A thread that samples again from the same place
//! under the same callers reads the same words at the same addresses, so the memo keeps the
//! last walk's start, its reads and its frames, and a walk from the same start checks the
//! words (a load and a compare each) instead of looking up every frame's rule (a hash, a
//! sequence-checked lookup and an unpacking each). The words are checked in the order the
//! walk read them, each only after those before it matched: while the code's rules are the
//! same, every address read is one the walk itself would read now, so the replay reads
//! nothing a walk would not.
//!
//! A replay reads no rule, and so does not read the C library's count of unloaded objects
//! either (a walk does, first: `dl_iterate_phdr` and its lock, about an eighth of a
//! sample's cost). What it reads is safe without it: only addresses that the recorded walk
//! of this same thread read, from the same stack pointer, each once the words before it
//! matched; they lie in this thread's stack, which stays mapped for the thread's life (a
//! memo is new with each thread's slot). What an unload could change is only the answer:
//! an object unloaded and another loaded at the same place could have other rules at the
//! same address, and if the stack then held the very words of the recorded walk, a replay
//! would repeat the recorded frames where a walk would find others. That costs one
//! sample's stack in a profile, never a wrong read, and the next walk that is not a replay
//! reads the count.
//!
//! A saved `rbp` matters only if a later frame finds its CFA from `rbp`. In code built
//! without frame pointers `rbp` holds data, and the copies its callees save differ from
//! call to call; checking them would make most replays miss. Only the `rbp` values a later
//! frame used are checked (and the starting `rbp` only if used before a frame restored it).

/// The most frames (left-out ones included) a remembered walk has: a deeper stack is
/// walked every time. 32 covers the stacks of the programs measured (a C `malloc` call from
/// `main` is about 12) in about 1 KiB per thread.
pub const MEMO_LEVELS: usize = 32;

/// The words a walk read stepping out of one frame.
#[derive(Clone, Copy)]
struct Level {
    /// Where the return address was, and its value (the caller's frame).
    ra_at: usize,
    ra: usize,
    /// Where the caller's `rbp` was, and its value (checked only if its bit is set in
    /// `WalkMemo::check_rbp`).
    rbp_at: usize,
    rbp: usize,
}

const NO_LEVEL: Level = Level {
    ra_at: 0,
    ra: 0,
    rbp_at: 0,
    rbp: 0,
};

/// Where the `rbp` a walk holds came from, while it is recorded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RbpSource {
    /// The register the walk started with.
    Start,
    /// The word saved at that level.
    Level(usize),
    /// No word: an outermost frame's undefined `rbp` (0), which needs no check.
    Constant,
}

/// One thread's last walk (see the module's documentation). Lives in the thread's slot and
/// is used only by its own samples, one at a time.
pub struct WalkMemo {
    /// A walk to replay is recorded here.
    valid: bool,
    /// The registers it started from; `rbp` checked only if `check_start_rbp`.
    pc: usize,
    rsp: usize,
    rbp: usize,
    check_start_rbp: bool,
    /// What it was asked for: frames left out, room for frames.
    skip: usize,
    room: usize,
    /// Frames written (the levels' return addresses from `skip` on).
    len: usize,
    levels: [Level; MEMO_LEVELS],
    /// Levels read (more than `MEMO_LEVELS`: too deep, not kept).
    depth: usize,
    /// Bit `i`: level `i`'s saved `rbp` was used by a later frame.
    check_rbp: u32,
    /// While recording: where the walk's current `rbp` came from.
    source: RbpSource,
    /// Walks answered by a replay.
    replays: u64,
    /// The caller's word for this walk's frames (see [`WalkMemo::tag`]); null when a new
    /// walk starts.
    tag: *mut (),
}

const _: () = assert!(MEMO_LEVELS <= u32::BITS as usize);

impl WalkMemo {
    /// An empty memo.
    pub const fn new() -> WalkMemo {
        WalkMemo {
            valid: false,
            pc: 0,
            rsp: 0,
            rbp: 0,
            check_start_rbp: false,
            skip: 0,
            room: 0,
            len: 0,
            levels: [NO_LEVEL; MEMO_LEVELS],
            depth: 0,
            check_rbp: 0,
            source: RbpSource::Start,
            replays: 0,
            tag: core::ptr::null_mut(),
        }
    }

    /// How many walks a replay answered.
    pub fn replays(&self) -> u64 {
        self.replays
    }

    /// What the caller kept with the frames of the walk held here ([`WalkMemo::set_tag`]);
    /// null once a walk starts to be recorded. Every capture with this memo either replays
    /// the walk held (the tag stays, and so do the frames) or records a new one (the tag is
    /// cleared), so after a capture the tag, if not null, was set for the frames it gave.
    /// The profiler keeps there where it counted those frames, to find it again without
    /// looking the stack up.
    pub fn tag(&self) -> *mut () {
        self.tag
    }

    /// Keeps `tag` with the frames of the walk held here, until a new walk starts.
    pub fn set_tag(&mut self, tag: *mut ()) {
        self.tag = tag;
    }

    /// Writes the remembered frames into `out` if a walk from `pc`, `rsp` and `rbp` for
    /// `skip` and `out.len()` would read the words the remembered one read (checked here,
    /// in its order); returns how many. `None`: walk.
    pub fn replay(
        &mut self,
        (pc, rsp, rbp): (usize, usize, usize),
        out: &mut [usize],
        skip: usize,
    ) -> Option<usize> {
        if !self.valid
            || self.pc != pc
            || self.rsp != rsp
            || (self.check_start_rbp && self.rbp != rbp)
            || self.skip != skip
            || self.room != out.len()
        {
            return None;
        }
        // Bit 0: this level's saved `rbp` is checked.
        let mut check_rbp = self.check_rbp;
        for level in &self.levels[..self.depth] {
            // SAFETY: the recorded walk, from this stack pointer on this thread, read this
            // word once every word before it matched (as all have): an aligned word of this
            // thread's stack, which stays mapped while the thread lives and which no other
            // thread writes (see the module's documentation).
            if unsafe { core::ptr::read_volatile(level.ra_at as *const usize) } != level.ra {
                return None;
            }
            if check_rbp & 1 != 0 {
                // SAFETY: as above.
                let rbp = unsafe { core::ptr::read_volatile(level.rbp_at as *const usize) };
                if rbp != level.rbp {
                    return None;
                }
            }
            check_rbp >>= 1;
        }
        let frames = &self.levels[self.skip..self.skip + self.len];
        for (o, level) in out.iter_mut().zip(frames) {
            *o = level.ra;
        }
        self.replays += 1;
        Some(self.len)
    }

    /// Starts recording a walk from `pc`, `rsp` and `rbp` for `skip` and `room` frames;
    /// forgets the last one.
    pub fn start(&mut self, (pc, rsp, rbp): (usize, usize, usize), skip: usize, room: usize) {
        self.valid = false;
        self.tag = core::ptr::null_mut();
        (self.pc, self.rsp, self.rbp) = (pc, rsp, rbp);
        self.check_start_rbp = false;
        (self.skip, self.room) = (skip, room);
        self.depth = 0;
        self.check_rbp = 0;
        self.source = RbpSource::Start;
    }

    /// The walk finds a CFA from its current `rbp`: that value must be checked on replay.
    pub fn rbp_used(&mut self) {
        match self.source {
            RbpSource::Start => self.check_start_rbp = true,
            RbpSource::Level(i) => self.check_rbp |= 1 << i,
            RbpSource::Constant => {}
        }
    }

    /// The walk read return address `ra` at `ra_at`, and then the caller's `rbp`: `None`
    /// if unchanged, `Some(None)` if undefined (0, no word read), else the word `rbp` read
    /// at `at`.
    pub fn level(&mut self, ra_at: usize, ra: usize, rbp: Option<Option<(usize, usize)>>) {
        let i = self.depth;
        self.depth += 1;
        if i >= MEMO_LEVELS {
            return;
        }
        let (rbp_at, rbp_value) = rbp.flatten().unwrap_or((0, 0));
        self.levels[i] = Level {
            ra_at,
            ra,
            rbp_at,
            rbp: rbp_value,
        };
        match rbp {
            None => {}
            Some(None) => self.source = RbpSource::Constant,
            Some(Some(_)) => self.source = RbpSource::Level(i),
        }
    }

    /// The walk ended with `len` frames written: kept if it was not too deep.
    pub fn finish(&mut self, len: usize) {
        if self.depth <= MEMO_LEVELS {
            self.len = len;
            self.valid = true;
        }
    }
}

impl Default for WalkMemo {
    fn default() -> Self {
        Self::new()
    }
}
