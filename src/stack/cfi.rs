//! The unwind rule of one x86-64 code address, read from the `.eh_frame` entry that covers
//! it: where the caller's stack pointer (the CFA, canonical frame address), the return
//! address and the caller's frame pointer are. See `stack.rs` for how the walk uses it and
//! `docs/design.md` (section 10) for why the profiler reads unwind tables itself.
//!
//! The reader follows the call frame instructions compilers emit for ordinary code (the
//! DWARF 4 `DW_CFA_*` set, `.eh_frame` flavour: `z`, `R`, `P`, `L` augmentations): a CFA of
//! `rsp` or `rbp` plus an offset, the return address and `rbp` saved at offsets from the CFA,
//! remembered and restored states. Anything else a frame may need (a CFA computed by an
//! expression, as stack-realigning prologues and signal trampolines have; a register rule
//! for `rbp` or the return address; a signal frame) makes the rule [`FrameRule::Unsupported`],
//! and the whole stack is then walked by the toolchain's unwinder instead.
//!
//! Pure functions over byte slices: the tests feed them hand-made entries.

/// DWARF register numbers on x86-64.
const RBP: u64 = 6;
const RSP: u64 = 7;
const RETURN_ADDRESS: u64 = 16;

/// What the walk does at one frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FrameRule {
    /// The caller's state is found from this frame's registers.
    Step(Step),
    /// The outermost frame (its return address is undefined, as `_start` and `clone`
    /// mark it): the stack ends here.
    End,
    /// Beyond this reader (or no unwind information at all): the toolchain's unwinder
    /// walks the stack instead.
    Unsupported,
}

/// How to find the caller's registers from a frame's.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Step {
    /// The CFA is `rbp + cfa_offset` (else `rsp + cfa_offset`).
    pub cfa_from_rbp: bool,
    pub cfa_offset: i32,
    /// The return address is the word at `CFA + ra_offset`.
    pub ra_offset: i32,
    /// Where the caller's `rbp` is.
    pub rbp: SavedRbp,
}

/// Where the caller's `rbp` is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SavedRbp {
    /// Unchanged: this frame did not touch it.
    Same,
    /// The word at `CFA + offset`.
    At(i32),
    /// Unknown (an outermost-frame marker): the walk continues with 0.
    Undefined,
}

impl FrameRule {
    /// Packs the rule into one word for the rule cache: the CFA offset in the low 32 bits,
    /// then the return address's and the saved `rbp`'s offsets in words (8 and 16 bits),
    /// then the tag. Offsets that do not fit (or are not whole words) pack as `Unsupported`.
    pub fn pack(self) -> u64 {
        const UNSUPPORTED: u64 = 2 << 56;
        match self {
            FrameRule::End => 1 << 56,
            FrameRule::Unsupported => UNSUPPORTED,
            FrameRule::Step(s) => {
                let words = |off: i32| (off % 8 == 0).then_some(off / 8);
                let Some(ra) = words(s.ra_offset).and_then(|w| i8::try_from(w).ok()) else {
                    return UNSUPPORTED;
                };
                let (rbp_tag, rbp) = match s.rbp {
                    SavedRbp::Same => (0, 0),
                    SavedRbp::Undefined => (1, 0),
                    SavedRbp::At(off) => match words(off).and_then(|w| i16::try_from(w).ok()) {
                        Some(w) => (2, w),
                        None => return UNSUPPORTED,
                    },
                };
                (s.cfa_offset as u32 as u64)
                    | (ra as u8 as u64) << 32
                    | (rbp as u16 as u64) << 40
                    | (rbp_tag as u64) << 56
                    | (s.cfa_from_rbp as u64) << 58
                    | 3 << 60
            }
        }
    }

    /// The rule [`pack`](Self::pack) made `word` from.
    pub fn unpack(word: u64) -> FrameRule {
        match word >> 60 {
            3 => FrameRule::Step(Step {
                cfa_from_rbp: word >> 58 & 1 == 1,
                cfa_offset: word as u32 as i32,
                ra_offset: i32::from((word >> 32) as u8 as i8) * 8,
                rbp: match word >> 56 & 3 {
                    0 => SavedRbp::Same,
                    1 => SavedRbp::Undefined,
                    _ => SavedRbp::At(i32::from((word >> 40) as u16 as i16) * 8),
                },
            }),
            _ if word >> 56 == 1 => FrameRule::End,
            _ => FrameRule::Unsupported,
        }
    }
}

/// A register's rule while the instructions run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RegRule {
    Same,
    Offset(i64),
    Undefined,
    /// A rule the walk cannot follow (another register, an expression, a value rule).
    Other,
}

#[derive(Clone, Copy)]
struct State {
    /// The CFA's register, or `None` for an expression.
    cfa_reg: Option<u64>,
    cfa_offset: i64,
    rbp: RegRule,
    ra: RegRule,
}

impl State {
    const START: State = State {
        cfa_reg: Some(RSP),
        cfa_offset: 0,
        rbp: RegRule::Same,
        ra: RegRule::Same,
    };

    fn rule_mut(&mut self, reg: u64) -> Option<&mut RegRule> {
        match reg {
            RBP => Some(&mut self.rbp),
            RETURN_ADDRESS => Some(&mut self.ra),
            _ => None,
        }
    }

    /// Sets `reg`'s rule; a rule for `rsp` other than the default is beyond the walk.
    fn set(&mut self, reg: u64, rule: RegRule) -> Option<()> {
        if reg == RSP {
            return None;
        }
        if let Some(r) = self.rule_mut(reg) {
            *r = rule;
        }
        Some(())
    }

    fn rule(self) -> FrameRule {
        if self.ra == RegRule::Undefined {
            return FrameRule::End;
        }
        let cfa_from_rbp = match self.cfa_reg {
            Some(RSP) => false,
            Some(RBP) => true,
            _ => return FrameRule::Unsupported,
        };
        let (Ok(cfa_offset), RegRule::Offset(ra)) = (i32::try_from(self.cfa_offset), self.ra)
        else {
            return FrameRule::Unsupported;
        };
        let rbp = match self.rbp {
            RegRule::Same => SavedRbp::Same,
            RegRule::Undefined => SavedRbp::Undefined,
            RegRule::Offset(off) => match i32::try_from(off) {
                Ok(off) => SavedRbp::At(off),
                Err(_) => return FrameRule::Unsupported,
            },
            RegRule::Other => return FrameRule::Unsupported,
        };
        let Ok(ra_offset) = i32::try_from(ra) else {
            return FrameRule::Unsupported;
        };
        FrameRule::Step(Step {
            cfa_from_rbp,
            cfa_offset,
            ra_offset,
            rbp,
        })
    }
}

/// A cursor over an entry's bytes; every read past the end is `None`.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u64> {
        Some(u64::from(u16::from_le_bytes(
            self.take(2)?.try_into().ok()?,
        )))
    }

    fn u32(&mut self) -> Option<u64> {
        Some(u64::from(u32::from_le_bytes(
            self.take(4)?.try_into().ok()?,
        )))
    }

    fn uleb(&mut self) -> Option<u64> {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let b = self.u8()?;
            if shift < 64 {
                value |= u64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
    }

    fn sleb(&mut self) -> Option<i64> {
        let mut value = 0i64;
        let mut shift = 0;
        loop {
            let b = self.u8()?;
            if shift < 64 {
                value |= i64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                if shift < 64 && b & 0x40 != 0 {
                    value |= -1 << shift;
                }
                return Some(value);
            }
        }
    }

    /// Skips a pointer encoded with `encoding` (`DW_EH_PE_*`): only its size matters here.
    fn skip_encoded(&mut self, encoding: u8) -> Option<()> {
        if encoding == 0xff {
            return Some(()); // DW_EH_PE_omit
        }
        match encoding & 0x0f {
            0x00 | 0x04 | 0x0c => self.take(8).map(drop),
            0x01 => self.uleb().map(drop),
            0x09 => self.sleb().map(drop),
            0x02 | 0x0a => self.take(2).map(drop),
            0x03 | 0x0b => self.take(4).map(drop),
            _ => None,
        }
    }
}

/// What the CIE (common information entry) gives every FDE that points to it.
struct Cie<'a> {
    code_align: u64,
    data_align: i64,
    /// The FDE's pointer encoding (`R` augmentation; absolute 8-byte without it).
    fde_encoding: u8,
    has_augmentation_data: bool,
    instructions: &'a [u8],
}

/// Reads a CIE: `bytes` from its length field to its end.
fn parse_cie(bytes: &[u8]) -> Option<Cie<'_>> {
    let mut r = Reader::new(bytes);
    let length = r.u32()?;
    if length == 0xffff_ffff || r.u32()? != 0 {
        return None; // a 64-bit entry, or not a CIE
    }
    let version = r.u8()?;
    if version != 1 && version != 3 {
        return None;
    }
    let start = r.pos;
    while r.u8()? != 0 {}
    let augmentation = &bytes[start..r.pos - 1];
    let code_align = r.uleb()?;
    let data_align = r.sleb()?;
    let ra_register = if version == 1 {
        u64::from(r.u8()?)
    } else {
        r.uleb()?
    };
    if ra_register != RETURN_ADDRESS {
        return None;
    }
    let mut fde_encoding = 0;
    let has_augmentation_data = augmentation.first() == Some(&b'z');
    if has_augmentation_data {
        let len = usize::try_from(r.uleb()?).ok()?;
        let mut data = Reader::new(r.take(len)?);
        for &c in &augmentation[1..] {
            match c {
                b'R' => fde_encoding = data.u8()?,
                b'L' => drop(data.u8()?),
                b'P' => {
                    let encoding = data.u8()?;
                    data.skip_encoded(encoding)?;
                }
                // 'S' (a signal frame) and anything unknown.
                _ => return None,
            }
        }
    } else if !augmentation.is_empty() {
        return None;
    }
    Some(Cie {
        code_align,
        data_align,
        fde_encoding,
        has_augmentation_data,
        instructions: &bytes[r.pos..],
    })
}

/// The rule at `target` in the function that starts at `func_start`, from its FDE (frame
/// description entry; `fde` from its length field to its end) and the CIE it points to
/// (`cie`, likewise). `target` is the address the walk looks up: a return address minus
/// one, so that a call that ends a function is looked up inside it.
pub fn rule_at(cie: &[u8], fde: &[u8], func_start: u64, target: u64) -> FrameRule {
    rule_from(cie, fde, func_start, target).unwrap_or(FrameRule::Unsupported)
}

fn rule_from(cie: &[u8], fde: &[u8], func_start: u64, target: u64) -> Option<FrameRule> {
    let cie = parse_cie(cie)?;
    let mut r = Reader::new(fde);
    if r.u32()? == 0xffff_ffff {
        return None;
    }
    r.u32()?; // the CIE pointer: the caller followed it
    r.skip_encoded(cie.fde_encoding)?; // where the function starts: `func_start`
    r.skip_encoded(cie.fde_encoding & 0x0f)?; // its length
    if cie.has_augmentation_data {
        let len = usize::try_from(r.uleb()?).ok()?;
        r.take(len)?;
    }
    let mut program = Program {
        cie: &cie,
        initial: State::START,
        saved: [State::START; 8],
        depth: 0,
    };
    let initial = program.run(State::START, cie.instructions, None)?;
    program.initial = initial;
    let state = program.run(initial, &fde[r.pos..], Some((func_start, target)))?;
    Some(state.rule())
}

struct Program<'c, 'a> {
    cie: &'c Cie<'a>,
    /// The state after the CIE's instructions, which `DW_CFA_restore` goes back to.
    initial: State,
    /// `DW_CFA_remember_state`'s stack.
    saved: [State; 8],
    depth: usize,
}

impl Program<'_, '_> {
    /// Runs `instructions` from `state`; with `until = (start, target)`, from location
    /// `start` and up to the last row at or before `target`. `None`: beyond this reader.
    fn run(
        &mut self,
        mut state: State,
        instructions: &[u8],
        until: Option<(u64, u64)>,
    ) -> Option<State> {
        let mut r = Reader::new(instructions);
        let mut loc = until.map_or(0, |(start, _)| start);
        while !r.at_end() {
            let op = r.u8()?;
            let advance = match op >> 6 {
                1 => Some(u64::from(op & 0x3f)),
                2 => {
                    let off = self.factored(r.uleb()?)?;
                    state.set(u64::from(op & 0x3f), RegRule::Offset(off))?;
                    None
                }
                3 => {
                    let reg = u64::from(op & 0x3f);
                    state.set(reg, self.initial_rule(reg))?;
                    None
                }
                _ => match op {
                    0x00 => None,                     // nop
                    0x02 => Some(u64::from(r.u8()?)), // advance_loc1
                    0x03 => Some(r.u16()?),           // advance_loc2
                    0x04 => Some(r.u32()?),           // advance_loc4
                    0x05 => {
                        // offset_extended
                        let reg = r.uleb()?;
                        let off = self.factored(r.uleb()?)?;
                        state.set(reg, RegRule::Offset(off))?;
                        None
                    }
                    0x06 => {
                        // restore_extended
                        let reg = r.uleb()?;
                        state.set(reg, self.initial_rule(reg))?;
                        None
                    }
                    0x07 => {
                        state.set(r.uleb()?, RegRule::Undefined)?;
                        None
                    }
                    0x08 => {
                        state.set(r.uleb()?, RegRule::Same)?;
                        None
                    }
                    0x09 => {
                        // register: `reg` is in another register
                        let reg = r.uleb()?;
                        r.uleb()?;
                        state.set(reg, RegRule::Other)?;
                        None
                    }
                    0x0a => {
                        *self.saved.get_mut(self.depth)? = state;
                        self.depth += 1;
                        None
                    }
                    0x0b => {
                        self.depth = self.depth.checked_sub(1)?;
                        // The CFA and the registers come back; the location does not.
                        state = self.saved[self.depth];
                        None
                    }
                    0x0c => {
                        // def_cfa
                        state.cfa_reg = Some(r.uleb()?);
                        state.cfa_offset = i64::try_from(r.uleb()?).ok()?;
                        None
                    }
                    0x0d => {
                        state.cfa_reg = Some(r.uleb()?);
                        None
                    }
                    0x0e => {
                        state.cfa_offset = i64::try_from(r.uleb()?).ok()?;
                        None
                    }
                    0x0f => {
                        // def_cfa_expression
                        let len = usize::try_from(r.uleb()?).ok()?;
                        r.take(len)?;
                        state.cfa_reg = None;
                        None
                    }
                    0x10 | 0x16 => {
                        // expression, val_expression
                        let reg = r.uleb()?;
                        let len = usize::try_from(r.uleb()?).ok()?;
                        r.take(len)?;
                        state.set(reg, RegRule::Other)?;
                        None
                    }
                    0x11 => {
                        // offset_extended_sf
                        let reg = r.uleb()?;
                        let off = r.sleb()?.checked_mul(self.cie.data_align)?;
                        state.set(reg, RegRule::Offset(off))?;
                        None
                    }
                    0x12 => {
                        // def_cfa_sf
                        state.cfa_reg = Some(r.uleb()?);
                        state.cfa_offset = r.sleb()?.checked_mul(self.cie.data_align)?;
                        None
                    }
                    0x13 => {
                        state.cfa_offset = r.sleb()?.checked_mul(self.cie.data_align)?;
                        None
                    }
                    0x14 | 0x15 => {
                        // val_offset(_sf): the register's value, not where it is saved
                        let reg = r.uleb()?;
                        if op == 0x14 {
                            r.uleb()?;
                        } else {
                            r.sleb()?;
                        }
                        state.set(reg, RegRule::Other)?;
                        None
                    }
                    0x2e => {
                        // GNU_args_size
                        r.uleb()?;
                        None
                    }
                    0x2f => {
                        // GNU_negative_offset_extended
                        let reg = r.uleb()?;
                        let off = self.factored(r.uleb()?)?.checked_neg()?;
                        state.set(reg, RegRule::Offset(off))?;
                        None
                    }
                    // set_loc, and anything else.
                    _ => return None,
                },
            };
            if let Some(delta) = advance {
                let (_, target) = until?;
                loc = loc.checked_add(delta.checked_mul(self.cie.code_align)?)?;
                if loc > target {
                    break;
                }
            }
        }
        Some(state)
    }

    /// An unsigned operand times the data alignment factor.
    fn factored(&self, operand: u64) -> Option<i64> {
        i64::try_from(operand)
            .ok()?
            .checked_mul(self.cie.data_align)
    }

    fn initial_rule(&self, reg: u64) -> RegRule {
        match reg {
            RBP => self.initial.rbp,
            RETURN_ADDRESS => self.initial.ra,
            _ => RegRule::Same,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CIE as GCC and LLVM write them for x86-64: "zR", code alignment 1, data alignment
    /// -8, return address register 16, pc-relative 4-byte pointers; CFA = rsp + 8, return
    /// address at CFA - 8.
    fn cie() -> Vec<u8> {
        let mut body = vec![0, 0, 0, 0, 1, b'z', b'R', 0, 1, 0x78, 16, 1, 0x1b];
        body.extend([0x0c, 7, 8, 0x90, 1]); // def_cfa rsp+8; offset r16 at cfa-8
        with_length(body)
    }

    fn with_length(body: Vec<u8>) -> Vec<u8> {
        let mut v = (body.len() as u32).to_le_bytes().to_vec();
        v.extend(body);
        v
    }

    /// An FDE over `cie()` with these instructions.
    fn fde(instructions: &[u8]) -> Vec<u8> {
        let mut body = vec![0; 4]; // CIE pointer
        body.extend([0; 4]); // pc begin (pc-relative sdata4)
        body.extend(100u32.to_le_bytes()); // pc range
        body.push(0); // augmentation data length
        body.extend(instructions);
        with_length(body)
    }

    fn step(cfa_from_rbp: bool, cfa_offset: i32, rbp: SavedRbp) -> FrameRule {
        FrameRule::Step(Step {
            cfa_from_rbp,
            cfa_offset,
            ra_offset: -8,
            rbp,
        })
    }

    /// The prologue `push rbp; mov rbp, rsp; ...; pop rbp; ret` at 0x1000.
    const FRAME_POINTER_PROLOGUE: &[u8] = &[
        0x41, // advance 1 (after push rbp)
        0x0e, 16, // def_cfa_offset 16
        0x86, 2,    // rbp at cfa-16
        0x43, // advance 3 (after mov rbp, rsp)
        0x0d, 6,    // def_cfa_register rbp
        0x4a, // advance 10 (after pop rbp)
        0x0c, 7, 8, // def_cfa rsp+8
    ];

    #[test]
    fn follows_a_frame_pointer_prologue() {
        let (c, f) = (cie(), fde(FRAME_POINTER_PROLOGUE));
        let at = |target| rule_at(&c, &f, 0x1000, target);
        assert_eq!(at(0x1000), step(false, 8, SavedRbp::Same));
        assert_eq!(at(0x1001), step(false, 16, SavedRbp::At(-16)));
        assert_eq!(at(0x1003), step(false, 16, SavedRbp::At(-16)));
        assert_eq!(at(0x1004), step(true, 16, SavedRbp::At(-16)));
        assert_eq!(at(0x100d), step(true, 16, SavedRbp::At(-16)));
        // After `pop rbp` the CFA is rsp-based again and rbp's rule is still the saved one
        // (as compilers leave it until a restore).
        assert_eq!(at(0x100e), step(false, 8, SavedRbp::At(-16)));
    }

    #[test]
    fn remembered_states_come_back() {
        // A function with an early return in the middle: remember, epilogue, restore.
        let program = [
            0x41, 0x0e, 16, 0x86, 2,    // push rbp
            0x0a, // remember
            0x41, 0x0e, 8, 0xc6, // pop rbp: cfa rsp+8, rbp restored
            0x41, 0x0b, // restore (after ret)
        ];
        let (c, f) = (cie(), fde(&program));
        let at = |target| rule_at(&c, &f, 0x1000, target);
        assert_eq!(at(0x1001), step(false, 16, SavedRbp::At(-16)));
        assert_eq!(at(0x1002), step(false, 8, SavedRbp::Same));
        assert_eq!(at(0x1003), step(false, 16, SavedRbp::At(-16)));
        // A restore with nothing remembered, or too deep a stack, is beyond the reader.
        assert_eq!(
            rule_at(&c, &fde(&[0x0b]), 0x1000, 0x1000),
            FrameRule::Unsupported
        );
        assert_eq!(
            rule_at(&c, &fde(&[0x0a; 9]), 0x1000, 0x1000),
            FrameRule::Unsupported
        );
        assert_ne!(
            rule_at(&c, &fde(&[0x0a; 8]), 0x1000, 0x1000),
            FrameRule::Unsupported
        );
    }

    #[test]
    fn long_advances_and_signed_offsets() {
        let program = [
            0x02, 0x10, 0x0e, 32, // advance_loc1 16; cfa rsp+32
            0x03, 0x00, 0x01, 0x13, 0x7a, // advance_loc2 256; def_cfa_offset_sf -6*-8 = 48
            0x04, 0, 0, 1, 0, 0x12, 6, 0x7e, // advance_loc4 65536; def_cfa_sf rbp, -2*-8 = 16
            0x11, 6, 0x03, // offset_extended_sf rbp at 3*-8 = -24
        ];
        let (c, f) = (cie(), fde(&program));
        let at = |target| rule_at(&c, &f, 0, target);
        assert_eq!(at(15), step(false, 8, SavedRbp::Same));
        assert_eq!(at(16), step(false, 32, SavedRbp::Same));
        assert_eq!(at(271), step(false, 32, SavedRbp::Same));
        assert_eq!(at(272), step(false, 48, SavedRbp::Same));
        assert_eq!(at(272 + 65536), step(true, 16, SavedRbp::At(-24)));
    }

    #[test]
    fn what_the_walk_cannot_follow() {
        let c = cie();
        let unsupported = |program: &[u8]| rule_at(&c, &fde(program), 0, 0);
        // A CFA expression (stack realignment), a register rule for rbp or the return
        // address, a value rule, a CFA from another register, set_loc, an unknown opcode.
        assert_eq!(unsupported(&[0x0f, 2, 0x77, 0]), FrameRule::Unsupported);
        assert_eq!(unsupported(&[0x10, 6, 1, 0]), FrameRule::Unsupported);
        assert_eq!(unsupported(&[0x09, 16, 3]), FrameRule::Unsupported);
        assert_eq!(unsupported(&[0x14, 6, 2]), FrameRule::Unsupported);
        assert_eq!(unsupported(&[0x0c, 10, 0]), FrameRule::Unsupported);
        assert_eq!(unsupported(&[0x01, 0, 0, 0, 0]), FrameRule::Unsupported);
        assert_eq!(unsupported(&[0x3f]), FrameRule::Unsupported);
        assert_eq!(unsupported(&[0x87, 1]), FrameRule::Unsupported); // rsp saved
        // An expression for another register is skipped.
        assert_eq!(
            unsupported(&[0x10, 3, 1, 0]),
            step(false, 8, SavedRbp::Same)
        );
        // The outermost frame.
        assert_eq!(unsupported(&[0x07, 16]), FrameRule::End);
        // A truncated entry.
        assert_eq!(unsupported(&[0x0c, 7]), FrameRule::Unsupported);
        // A signal frame's CIE ("zRS").
        let mut signal = vec![0, 0, 0, 0, 1, b'z', b'R', b'S', 0, 1, 0x78, 16, 1, 0x1b];
        signal.extend([0x0c, 7, 8, 0x90, 1]);
        assert_eq!(
            rule_at(&with_length(signal), &fde(&[]), 0, 0),
            FrameRule::Unsupported
        );
    }

    #[test]
    fn a_personality_and_lsda_are_skipped() {
        // "zPLR": personality pc-relative sdata4, LSDA and FDE encodings.
        let mut body = vec![0, 0, 0, 0, 1, b'z', b'P', b'L', b'R', 0, 1, 0x78, 16, 7];
        body.extend([0x9b, 1, 2, 3, 4, 0x0c, 0x1b]);
        body.extend([0x0c, 7, 8, 0x90, 1]);
        let c = with_length(body);
        let mut f = vec![0; 4];
        f.extend([0; 8]);
        f.extend([4, 0, 0, 0, 0]); // augmentation data: the LSDA pointer
        f.extend([0x41, 0x0e, 16]);
        let f = with_length(f);
        assert_eq!(rule_at(&c, &f, 0, 1), step(false, 16, SavedRbp::Same));
    }

    #[test]
    fn nested_states_and_the_cies_own_rules() {
        // Two states remembered; a restore takes back the later one.
        let program = [
            0x41, 0x0e, 16, 0x0a, // cfa rsp+16, remember
            0x41, 0x0e, 24, 0x0a, // cfa rsp+24, remember
            0x41, 0x0e, 32, // cfa rsp+32
            0x41, 0x0b, // restore: rsp+24
            0x41, 0x0b, // restore: rsp+16
        ];
        let (c, f) = (cie(), fde(&program));
        let at = |target| rule_at(&c, &f, 0, target);
        assert_eq!(at(3), step(false, 32, SavedRbp::Same));
        assert_eq!(at(4), step(false, 24, SavedRbp::Same));
        assert_eq!(at(5), step(false, 16, SavedRbp::Same));
        // A CIE (version 3: the return address register is a LEB128) whose own
        // instructions save rbp: a restore of rbp goes back to that rule, not to "same".
        let mut body = vec![0, 0, 0, 0, 3, b'z', b'R', 0, 1, 0x78, 16, 1, 0x1b];
        body.extend([0x0c, 7, 16, 0x90, 1, 0x86, 2]);
        let c3 = with_length(body);
        let f = fde(&[0x41, 0x08, 6, 0x41, 0xc6]);
        assert_eq!(rule_at(&c3, &f, 0, 0), step(false, 16, SavedRbp::At(-16)));
        assert_eq!(rule_at(&c3, &f, 0, 1), step(false, 16, SavedRbp::Same));
        assert_eq!(rule_at(&c3, &f, 0, 2), step(false, 16, SavedRbp::At(-16)));
        // Version 4 (and anything else) is beyond the reader.
        let mut body = vec![0, 0, 0, 0, 4, b'z', b'R', 0, 1, 0x78, 16, 1, 0x1b];
        body.extend([0x0c, 7, 8, 0x90, 1]);
        assert_eq!(
            rule_at(&with_length(body), &fde(&[]), 0, 0),
            FrameRule::Unsupported
        );
    }

    #[test]
    fn an_omitted_personality_pointer_takes_no_bytes() {
        // "zPR" with the personality's encoding DW_EH_PE_omit: no pointer follows it.
        let mut body = vec![
            0, 0, 0, 0, 1, b'z', b'P', b'R', 0, 1, 0x78, 16, 2, 0xff, 0x03,
        ];
        body.extend([0x0c, 7, 8, 0x90, 1]);
        let c = with_length(body);
        // udata4 pointers (as sdata4: 4 bytes each).
        assert_eq!(
            rule_at(&c, &fde(&[0x41, 0x0e, 16]), 0, 1),
            step(false, 16, SavedRbp::Same)
        );
    }

    /// The rest of the opcodes compilers and assemblers write, each in a program whose
    /// rule it decides (a reader that did not know one would answer `Unsupported`).
    #[test]
    fn every_other_opcode_is_read() {
        let c = cie();
        let at = |program: &[u8], target| rule_at(&c, &fde(program), 0, target);
        let ra_at = |ra_offset| {
            FrameRule::Step(Step {
                cfa_from_rbp: false,
                cfa_offset: 8,
                ra_offset,
                rbp: SavedRbp::Same,
            })
        };
        // offset_extended: rbp at 2 * -8.
        assert_eq!(at(&[0x05, 6, 2], 0), step(false, 8, SavedRbp::At(-16)));
        // restore_extended: back to the CIE's rule for rbp.
        let restore = [0x86, 2, 0x41, 0x06, 6];
        assert_eq!(at(&restore, 0), step(false, 8, SavedRbp::At(-16)));
        assert_eq!(at(&restore, 1), step(false, 8, SavedRbp::Same));
        // A restore of the return address goes back to the CIE's rule for it (CFA - 8).
        let restore_ra = [0x90, 2, 0x41, 0xd0];
        assert_eq!(at(&restore_ra, 0), ra_at(-16));
        assert_eq!(at(&restore_ra, 1), ra_at(-8));
        // register, val_offset and val_offset_sf for another register: skipped.
        assert_eq!(at(&[0x09, 3, 5], 0), step(false, 8, SavedRbp::Same));
        assert_eq!(at(&[0x14, 3, 2], 0), step(false, 8, SavedRbp::Same));
        assert_eq!(at(&[0x15, 3, 0x7e], 0), step(false, 8, SavedRbp::Same));
        // A CFA expression, then a CFA from a register again.
        assert_eq!(
            at(&[0x0f, 2, 0x77, 0, 0x0c, 7, 16], 0),
            step(false, 16, SavedRbp::Same)
        );
        // GNU_args_size: skipped; GNU_negative_offset_extended: rbp at -(2 * -8).
        assert_eq!(at(&[0x2e, 16], 0), step(false, 8, SavedRbp::Same));
        assert_eq!(at(&[0x2f, 6, 2], 0), step(false, 8, SavedRbp::At(16)));
        // A two-byte signed LEB128: -200 * -8.
        assert_eq!(
            at(&[0x13, 0xb8, 0x7e], 0),
            step(false, 1600, SavedRbp::Same)
        );
    }

    /// A CIE with the FDE pointers in `encoding` (`DW_EH_PE_*`), and an FDE over it whose
    /// start and length are `pointer` (the encoded bytes), with `instructions`.
    fn entries_encoded(encoding: u8, pointer: &[u8], instructions: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut body = vec![0, 0, 0, 0, 1, b'z', b'R', 0, 1, 0x78, 16, 1, encoding];
        body.extend([0x0c, 7, 8, 0x90, 1]);
        let mut f = vec![0; 4];
        f.extend(pointer);
        f.extend(pointer);
        f.push(0);
        f.extend(instructions);
        (with_length(body), with_length(f))
    }

    /// Every pointer size an FDE's start and length can take is skipped by its size; a CIE
    /// with no augmentation has absolute 8-byte pointers; a version 3 CIE's return address
    /// register is a LEB128 (here one of two bytes).
    #[test]
    fn every_pointer_encoding_and_cie_form_is_read() {
        let want = step(false, 16, SavedRbp::Same);
        let program = [0x41, 0x0e, 16];
        for (encoding, pointer) in [
            (0x00, &[1, 0, 0, 0, 0, 0, 0, 0][..]), // absptr
            (0x04, &[1, 0, 0, 0, 0, 0, 0, 0]),     // udata8
            (0x0c, &[1, 0, 0, 0, 0, 0, 0, 0]),     // sdata8
            (0x01, &[0x81, 0x01]),                 // uleb128
            (0x09, &[0x81, 0x7f]),                 // sleb128
            (0x02, &[1, 0]),                       // udata2
            (0x0a, &[1, 0]),                       // sdata2
            (0x03, &[1, 0, 0, 0]),                 // udata4
            (0x1b, &[1, 0, 0, 0]),                 // pcrel sdata4
        ] {
            let (c, f) = entries_encoded(encoding, pointer, &program);
            assert_eq!(rule_at(&c, &f, 0, 1), want, "encoding {encoding:#x}");
        }
        // No augmentation: no augmentation data in the FDE either.
        let mut body = vec![0, 0, 0, 0, 1, 0, 1, 0x78, 16];
        body.extend([0x0c, 7, 8, 0x90, 1]);
        let mut f = vec![0; 4];
        f.extend([0; 16]);
        f.extend(program);
        assert_eq!(rule_at(&with_length(body), &with_length(f), 0, 1), want);
        // Version 3, the return address register 16 as the LEB128 0x90 0x00.
        let mut body = vec![0, 0, 0, 0, 3, b'z', b'R', 0, 1, 0x78, 0x90, 0x00, 1, 0x1b];
        body.extend([0x0c, 7, 8, 0x90, 1]);
        assert_eq!(rule_at(&with_length(body), &fde(&program), 0, 1), want);
    }

    #[test]
    fn rules_pack_into_a_word() {
        let rules = [
            FrameRule::End,
            FrameRule::Unsupported,
            step(false, 8, SavedRbp::Same),
            step(true, 16, SavedRbp::At(-16)),
            step(false, i32::MAX - 7, SavedRbp::Undefined),
            step(false, -8, SavedRbp::At(8 * i32::from(i16::MIN))),
            FrameRule::Step(Step {
                cfa_from_rbp: true,
                cfa_offset: 24,
                ra_offset: 8 * 127,
                rbp: SavedRbp::At(-8),
            }),
        ];
        for rule in rules {
            assert_eq!(FrameRule::unpack(rule.pack()), rule);
        }
        // What does not fit is beyond the walk.
        for ra_offset in [-4, 8 * 128] {
            let s = Step {
                cfa_from_rbp: false,
                cfa_offset: 8,
                ra_offset,
                rbp: SavedRbp::Same,
            };
            assert_eq!(
                FrameRule::unpack(FrameRule::Step(s).pack()),
                FrameRule::Unsupported
            );
        }
        let s = step(false, 8, SavedRbp::At(8 * 40_000));
        assert_eq!(FrameRule::unpack(s.pack()), FrameRule::Unsupported);
    }
}
