//! Giving freed heap memory back to the operating system.
//!
//! glibc's allocator keeps what is freed in the middle of its heaps for later allocations:
//! after a big drop (thousands of histories forgotten, a start-up that replayed a long journal)
//! the process would stay at its peak resident size, though the index no longer holds the
//! data. `malloc_trim` hands the free pages back. It is called at the edges after such drops,
//! never under the state's lock (it walks the allocator's free lists: milliseconds on a heap
//! of a few hundred MB). Elsewhere than on glibc it does nothing.

/// Returns free heap pages to the operating system, where the allocator allows it.
pub fn give_back_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer from us and only works on the allocator's own free
    // lists, under the allocator's own locks; any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
