//! Gives back the main thread's stack pages that start-up touched and will not use again.
//!
//! Start-up (parsing, spool recovery, starting the runtime and the senders) touches about
//! 160 KiB of the main thread's stack; afterwards that thread only waits for signals, about
//! 10 KiB deep. The kernel keeps touched stack pages resident for the life of the process, and
//! on a relay idling at 3 MiB that was 5 % of it (#18: idle RSS ≤ 3 MiB). Pages below the
//! current stack pointer hold nothing live, so they are dropped with `MADV_DONTNEED`; if the
//! thread ever goes deeper again they come back as fresh zero pages.

/// `[stack]`'s start address from the text of `/proc/self/maps`.
pub fn stack_start(maps: &str) -> Option<usize> {
    let line = maps.lines().find(|l| l.ends_with("[stack]"))?;
    let range = line.split_whitespace().next()?;
    usize::from_str_radix(range.split_once('-')?.0, 16).ok()
}

/// The page-aligned span `[start, end)` below `sp` (minus `margin`) that holds nothing live.
pub fn unused_span(start: usize, sp: usize, margin: usize, page: usize) -> Option<(usize, usize)> {
    let end = sp.checked_sub(margin)? & !(page - 1);
    (end > start).then_some((start, end))
}

/// Drops the main thread's unused stack pages. Call it from the main thread, at its shallowest
/// point before a long wait. Best effort: anything unusual leaves the stack as it is.
pub fn release_unused_main_stack() {
    let here = 0u8;
    let sp = std::ptr::addr_of!(here) as usize;
    let Some(start) = std::fs::read_to_string("/proc/self/maps").ok().and_then(|m| stack_start(&m))
    else {
        return;
    };
    // The running frames and whatever a signal or a log line may push: 32 KiB.
    let Some((from, to)) = unused_span(start, sp, 32 << 10, 4096) else { return };
    // SAFETY: `from..to` lies inside this thread's own stack mapping and entirely below its
    // stack pointer (less a margin), so no live frame, local or reference points into it.
    // MADV_DONTNEED on private anonymous memory only makes those pages read back as zeros.
    let rc = unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_DONTNEED) };
    log::debug!("released {} KiB of start-up stack (rc={rc})", (to - from) >> 10);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_line_is_found_and_parsed() {
        let maps = "55d0-55e0 r-xp 00000000 fd:00 1 /usr/bin/x\n\
                    7fffb8ec4000-7fffb8eec000 rw-p 00000000 00:00 0                          [stack]\n\
                    ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]\n";
        assert_eq!(stack_start(maps), Some(0x7fffb8ec4000));
        assert_eq!(stack_start("no stack here\n"), None);
    }

    #[test]
    fn only_whole_pages_below_the_margin_are_released() {
        let (start, sp) = (0x1000_0000, 0x1002_8618);
        assert_eq!(unused_span(start, sp, 0x8000, 0x1000), Some((start, 0x1002_0000)));
        // Too shallow to give anything back.
        assert_eq!(unused_span(start, start + 0x4000, 0x8000, 0x1000), None);
        assert_eq!(unused_span(start, 0x10, 0x8000, 0x1000), None);
    }
}
