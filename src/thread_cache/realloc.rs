//! `realloc` for the thread cache: in place where the object's class or pages allow, and
//! buffers that keep growing moved once into a page span with room. See `lib.rs` for an
//! overview, and `docs/design.md` for the growth policy.

use super::ThreadCache;
use crate::check::fatal_at;
use crate::heap::{Access, GROWTH_MIN, Heap, LEND_MIN, Owner, growth_room};
use crate::size_class;
use crate::span;
use crate::sys::PageSource;
use core::ptr::null_mut;

impl ThreadCache {
    /// A new object for a small object of `old_size` bytes that `realloc` moves to the class
    /// of `new_size` (below [`LEND_MIN`], so never a page span), from its bin; null when the
    /// bin is empty (then the general path). A growth is remembered as the growing buffer,
    /// as the general path does. No atomic, no lock.
    #[inline(always)]
    pub fn pop_for_move(&mut self, old_size: usize, new_size: usize) -> *mut u8 {
        debug_assert!(new_size < LEND_MIN);
        let new = if new_size <= size_class::SMALL_STEP_LIMIT {
            // SAFETY: checked just above.
            unsafe { self.pop_small(new_size) }
        } else {
            self.pop(size_class::class_of_medium(new_size))
        };
        if new_size > old_size {
            self.grown = new as usize;
        }
        new
    }

    /// Resizes `ptr` (allocated with `align`) to `new_size` bytes: in place when the new size
    /// keeps the small object's class, or fits the page span's object with at most half of
    /// it wasted (as mimalloc does) or as the growing buffer's headroom, or when the page
    /// span can grow into a free run after it; otherwise moved. Growth into the large tier,
    /// and a buffer that keeps growing, move to a page span with headroom (see
    /// [`growth_room`]). Returns null (leaving `ptr` intact) when out of memory.
    ///
    /// # Safety
    /// `ptr` was handed out by this heap with alignment `align`, and is not used afterwards
    /// unless null is returned.
    pub unsafe fn realloc<S: PageSource>(
        &mut self,
        heap: &Heap<S>,
        ptr: *mut u8,
        align: usize,
        new_size: usize,
    ) -> *mut u8 {
        let owner = heap.owner_for(ptr, Access::Realloc);
        let (old_usable, old_span) = match owner {
            Owner::Small(span) => {
                // A freed small object carries the free key: resizing it would hand it to
                // two owners (it is on a free list too).
                // SAFETY: validated by `owner`: the start of an object of at least 16 bytes.
                if crate::check::FREE_CHECKS && unsafe { span::is_marked_freed(ptr, self.key) } {
                    fatal_at("invalid realloc: pointer already freed", ptr as usize);
                }
                // SAFETY: validated by `owner`.
                (unsafe { span.as_ref() }.class().size(), None)
            }
            Owner::Large(span) => {
                // SAFETY: validated by `owner`.
                let s = unsafe { span.as_ref() };
                // Stashed, or listed (its start carries the free key, as a stashed one's).
                // SAFETY: a large object's start: at least two words.
                if s.is_stashed_large() || unsafe { crate::span::is_marked_freed(ptr, self.key) } {
                    fatal_at("invalid realloc: pointer already freed", ptr as usize);
                }
                (s.object_bytes(), Some(span))
            }
        };
        let new_class = size_class::class_for(new_size, align);
        // The buffer this thread is growing (a hint: it can be stale, and then an object
        // merely keeps its room).
        let growing_buffer = ptr as usize == self.grown;
        // The room the new size needs: its class's size, as `GlobalAlloc::realloc`'s
        // same-class shortcut assumes.
        let fits = new_class.map_or(new_size, |c| c.size());
        match old_span {
            // A small object stays only in its own class (so a layout always names the
            // class of the span that holds the object, as the debug-build check expects).
            None if new_class.is_some_and(|c| c.size() == old_usable) => return ptr,
            // A page span holds it and wastes at most half (mimalloc's rule), or it is the
            // growing buffer in its headroom.
            Some(_) if fits <= old_usable && (growing_buffer || new_size >= old_usable / 2) => {
                return ptr;
            }
            // Within the large tier, or growing: in place if its pages (and a free run after
            // them) allow.
            Some(span)
                if (new_class.is_none() || fits > old_usable)
                    // SAFETY: we own the large object; its alignment is unchanged.
                    && unsafe { heap.resize_large_in_place(span, fits) } =>
            {
                // Its length changed: so does its listed word (or it has one now, or no more).
                Self::set_large_word(heap, span);
                return ptr;
            }
            _ => {}
        }
        let growing = new_size > old_usable;
        // Growing into the large tier, or the buffer this thread moved by growth before and
        // grows again: a page span with room for GROWTH_HEADROOM times the new size, that
        // can grow in place further (its pages past the object stay untouched). It moves
        // once where it would move at every class, and later growths take no lock. The
        // stash's spans count as room: they go back to the page heap first.
        let to_pages =
            growing && (new_class.is_none() || (growing_buffer && new_size >= GROWTH_MIN));
        // From LEND_MIN the growing buffer takes a lent stashed span if there is one: its
        // pages are resident already, and one lent span at a time bounds what it can pin.
        let lend = growing && growing_buffer && new_size >= LEND_MIN;
        let room = growth_room(new_size);
        let lent = if lend {
            self.lend_stashed(heap, room, align)
        } else {
            None
        };
        let new = match lent {
            Some(p) => p,
            None if to_pages => {
                self.free_stash(heap);
                // Out of memory for the headroom is not out of memory: then the size.
                heap.alloc_large_to_grow(room, align)
                    .or_else(|| heap.alloc_large_to_grow(new_size, align))
                    .map_or(null_mut(), |(p, zeroed)| {
                        Self::take_large(heap, p.as_ptr(), zeroed)
                    })
            }
            None => self.alloc(heap, new_size, align),
        };
        if new.is_null() {
            return new;
        }
        if growing {
            self.grown = new as usize;
        }
        // SAFETY: both are live, distinct objects of at least the copied length.
        unsafe {
            core::ptr::copy_nonoverlapping(ptr, new, old_usable.min(new_size));
            match old_span {
                // A large object that moved goes to the page heap, not the stash: its
                // pages may be the room the next growth needs.
                Some(span) => {
                    crate::sample_table::release_sample(span.as_ref());
                    self.forget_lent(span.as_ref().start_addr());
                    self.frees = self.frees.wrapping_add(1);
                    heap.free_large(span)
                }
                None => self.free(heap, ptr),
            }
        }
        new
    }
}
